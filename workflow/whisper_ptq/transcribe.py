"""Batched greedy transcription of cached features, with a timing protocol.

Timing: one warm-up batch is run first and not timed; then every batch is timed from the
start of ``generate`` to the end of token decoding (``torch.cuda.synchronize`` on GPU).
RTF = Σ timed seconds / Σ audio seconds. Threads are fixed before loading and recorded.
"""

from __future__ import annotations

import time

from . import PipelineError
from .features import FeatureCache, load_manifest, select
from .io import write_json, write_jsonl

NB_MAX_FRAMES = 3000  # 30 s of Whisper log-mel frames


def generation_kwargs(model, decoding: dict) -> dict:
    kwargs = {"num_beams": 1, "do_sample": False, "max_new_tokens": decoding.get("max_new_tokens", 440)}
    if getattr(model.generation_config, "is_multilingual", False):
        kwargs["language"] = decoding.get("language", "en")
        kwargs["task"] = decoding.get("task", "transcribe")
    return kwargs


def model_input_dtype(model):
    return model.model.encoder.conv1.weight.dtype


def make_batches(rows: list[dict], batch_size: int) -> list[list[dict]]:
    """Fixed-length (≤ 30 s) utterances in batches; longer ones alone (long-form decoding)."""
    short = [r for r in rows if r["n_frames"] <= NB_MAX_FRAMES]
    long = [r for r in rows if r["n_frames"] > NB_MAX_FRAMES]
    batches = [short[i:i + batch_size] for i in range(0, len(short), batch_size)]
    return batches + [[r] for r in long]


class Transcriber:
    def __init__(self, model, tokenizer, device: str, decoding: dict):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.kwargs = generation_kwargs(model, decoding)
        self.dtype = model_input_dtype(model)

    def _sync(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def __call__(self, feats) -> tuple[list[str], float]:
        """Transcribe a ``[B, n_mels, frames]`` batch; return texts and timed seconds."""
        import torch

        feats = feats.to(self.device, self.dtype)
        kwargs = dict(self.kwargs)
        if feats.shape[-1] > NB_MAX_FRAMES:  # long-form: sequential 30 s windows
            kwargs["return_timestamps"] = True
            kwargs["attention_mask"] = torch.ones(feats.shape[0], feats.shape[-1], dtype=torch.long,
                                                  device=self.device)
        self._sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(feats, **kwargs)
            if not isinstance(out, torch.Tensor):
                out = out["sequences"] if isinstance(out, dict) else out.sequences
        texts = self.tokenizer.batch_decode(out.cpu(), skip_special_tokens=True)
        self._sync()
        return texts, time.perf_counter() - t0


def run(model, tokenizer, features_path, manifest_path, device, decoding, *, limit=None,
        exclude=(), split="", threads=None, warmup_batches=1, progress=True):
    """Transcribe a split; return (hypothesis rows, timing dict)."""
    import torch
    from tqdm import tqdm

    rows = select(load_manifest(manifest_path), limit, exclude, split)
    cache = FeatureCache(features_path)
    batches = make_batches(rows, int(decoding.get("batch_size", 16)))
    transcriber = Transcriber(model, tokenizer, device, decoding)

    def stack(batch):
        return torch.stack([cache.get(r["id"]) for r in batch])

    for batch in batches[:warmup_batches]:
        transcriber(stack(batch))
    out_rows, seconds = [], 0.0
    for batch in tqdm(batches, desc=f"transcribe {split}", unit="batch", disable=not progress):
        texts, dt = transcriber(stack(batch))
        seconds += dt
        for r, text in zip(batch, texts):
            out_rows.append({"id": r["id"], "speaker": r["speaker"], "duration": r["duration"],
                             "reference": r["reference"], "hypothesis": text})
    audio = sum(r["duration"] for r in rows)
    timing = {
        "device": device,
        "utterances": len(rows),
        "audio_seconds": audio,
        "compute_seconds": seconds,
        "rtf": seconds / audio,
        "rtfx": audio / seconds if seconds > 0 else None,
        "batches": len(batches),
        "batch_size": int(decoding.get("batch_size", 16)),
        "warmup_batches": min(warmup_batches, len(batches)),
        "threads": threads if threads is not None else torch.get_num_threads(),
    }
    return out_rows, timing


def transcribe_checkpoint(ckpt_dir, model_dir, features_path, manifest_path, device, decoding,
                          out_hyp, out_timing, *, limit=None, exclude=(), split="", threads=1):
    from transformers import WhisperTokenizer

    from . import provenance
    from .checkpoint import load_checkpoint
    from .modeling import check_device, set_threads

    device = check_device(device)
    threads = set_threads(threads)
    model, meta = load_checkpoint(ckpt_dir, model_dir, device)
    tokenizer = WhisperTokenizer.from_pretrained(model_dir)
    rows, timing = run(model, tokenizer, features_path, manifest_path, device, decoding,
                       limit=limit, exclude=exclude, split=split, threads=threads)
    if not rows:
        raise PipelineError(f"split {split}: nothing was transcribed")
    timing.update({"entry": meta["entry"], "split": split, "facts": meta["facts"],
                   "decoding": decoding, "provenance": provenance.collect(threads)})
    write_jsonl(out_hyp, rows)
    write_json(out_timing, timing)
    return timing
