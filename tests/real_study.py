"""The real-weight check shared by the per-library tests: tiny.en on N_SCORED utterances of
the mini test-clean (after N_CALIB calibration ones), decoded as the pipeline decodes."""

from __future__ import annotations

from pathlib import Path

N_SCORED, N_CALIB = 8, 4
MAX_WER_INCREASE = 1.5  # points, the bound for 8-bit entries (there: base, test-clean)


def build_cache(split_dir: Path, model_dir: Path, out: Path) -> tuple[Path, list[str]]:
    """A feature cache (f.safetensors + m.jsonl in ``out``) of the calibration utterances and
    the scored ones; returns (out, calibration ids)."""
    from safetensors.numpy import save_file
    from transformers import WhisperFeatureExtractor

    from whisper_ptq.data import list_utterances
    from whisper_ptq.features import calibration_ids, log_mel, read_flac, select
    from whisper_ptq.io import write_jsonl

    extractor = WhisperFeatureExtractor.from_pretrained(model_dir)
    utts = {u.id: u for u in list_utterances(split_dir, "test-clean")}
    pool = [{"id": u.id, "speaker": u.speaker, "reference": u.reference} for u in utts.values()]
    calib = calibration_ids(pool, N_CALIB)
    chosen = calib + [r["id"] for r in select(pool, N_SCORED, exclude=calib)]
    tensors, rows = {}, []
    for uid in chosen:
        audio = read_flac(utts[uid].path)
        tensors[uid] = log_mel(extractor, audio)
        rows.append({"id": uid, "speaker": utts[uid].speaker, "duration": audio.size / 16000,
                     "reference": utts[uid].reference, "n_frames": int(tensors[uid].shape[-1])})
    save_file(tensors, str(out / "f.safetensors"))
    write_jsonl(out / "m.jsonl", rows)
    return out, calib


def pipeline_wer(ckpt, model_dir, cache) -> float:
    """WER of a checkpoint on the scored utterances (never the calibration ones)."""
    from transformers import WhisperTokenizer

    from whisper_ptq.checkpoint import load_checkpoint
    from whisper_ptq.decode import run
    from whisper_ptq.scoring import score_rows

    d, calib = cache
    model, _ = load_checkpoint(ckpt, model_dir, "cpu")
    rows, _ = run(model, WhisperTokenizer.from_pretrained(model_dir), d / "f.safetensors",
                  d / "m.jsonl", "cpu", {"batch_size": 8, "max_new_tokens": 160},
                  exclude=calib, progress=False,
                  # the warm-up batch only steadies the timing, which is not checked here: its
                  # hypotheses are thrown away, and it would decode every utterance twice
                  timing={"warmup_batches": 0})
    assert not {r["id"] for r in rows} & set(calib) and len(rows) == N_SCORED
    return score_rows(rows)["wer"]
