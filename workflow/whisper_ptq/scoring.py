"""WER / CER after the Whisper English text normalizer, with per-utterance edit counts; the
score step (``score_run``): a run's shards gathered, scored, and its ``Score`` record."""

from __future__ import annotations

from functools import lru_cache

from . import PipelineError
from .io import read_jsonl, write_jsonl
from .records import SCORE_TIMING, QuantMeta, Score, ShardTiming, Timing

EDIT_KEYS = ("hits", "substitutions", "deletions", "insertions")


@lru_cache(maxsize=1)
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return _normalizer()(text)


def _counts(out) -> dict:
    return {k: int(getattr(out, k)) for k in EDIT_KEYS}


def score_utterance(reference: str, hypothesis: str) -> dict:
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    words = _counts(jiwer.process_words(ref, hyp))
    chars = _counts(jiwer.process_characters(ref, hyp))
    return {
        "ref_norm": ref,
        "hyp_norm": hyp,
        "words": {**words, "n": words["hits"] + words["substitutions"] + words["deletions"]},
        "chars": {**chars, "n": chars["hits"] + chars["substitutions"] + chars["deletions"]},
    }


def errors(counts: dict) -> int:
    return counts["substitutions"] + counts["deletions"] + counts["insertions"]


def aggregate(utts: list[dict], unit: str) -> dict:
    total = {k: sum(u[unit][k] for u in utts) for k in (*EDIT_KEYS, "n")}
    total["rate"] = 100.0 * errors(total) / total["n"] if total["n"] else float("nan")
    return total


def score_rows(rows: list[dict]) -> dict:
    """Corpus WER/CER (in %) = Σ edits / Σ reference length, and per-utterance details."""
    utts = []
    for r in rows:
        u = score_utterance(r["reference"], r["hypothesis"])
        utts.append({"id": r["id"], "speaker": r.get("speaker"), **u,
                     # the temperature its hypothesis was kept at (decoding.fallback)
                     **({"temperature": r["temperature"]} if "temperature" in r else {})})
    words, chars = aggregate(utts, "words"), aggregate(utts, "chars")
    return {"wer": words["rate"], "cer": chars["rate"], "words": words, "chars": chars,
            "utterances": utts}


def size_reduction(meta: QuantMeta, fp32_meta: QuantMeta) -> dict:
    """1 − bytes / fp32 bytes, for the whole checkpoint and for the linear layers alone (%)."""
    return {
        "bytes_on_disk": meta.bytes_on_disk,
        "fp32_bytes_on_disk": fp32_meta.bytes_on_disk,
        "size_reduction": 100.0 * (1 - meta.bytes_on_disk / fp32_meta.bytes_on_disk),
        "linear_size_reduction": 100.0 * (1 - meta.linear_bytes / fp32_meta.fp32_linear_bytes),
    }


# the same in every shard of a run (checked when gathering)
_SHARED = ("entry", "split", "device", "regime", "batch_size", "threads", "warmup_batches",
           "sorted_by_length", "facts", "decoding")
_SUMMED = ("utterances", "audio_seconds", "compute_seconds", "encoder_seconds", "decoder_seconds",
           "longform_seconds", "generated_tokens", "batches")
_PEAK = ("peak_rss_mb", "timed_peak_rss_mb", "resident_rss_mb", "cuda_peak_allocated_mb",
         "cuda_peak_reserved_mb")


def hardware(provenance: dict | None) -> str:
    """What a timing depends on: CPU model and GPU (not the host name)."""
    prov = provenance or {}
    return f"{(prov.get('cpu') or {}).get('model')} / {prov.get('gpu') or 'no GPU'}"


def gather_shards(hyps: list[list[dict]], timings: list[ShardTiming]) -> tuple[list[dict], Timing]:
    """One run from its shards: hypotheses in id order and the pooled timing.

    RTF pools timed seconds and audio over shards (Σ timed / Σ audio); each shard's host and
    hardware stay listed under ``shard_runs``, and ``mixed_hardware`` names the hardware when
    the shards did not all run on the same (their RTFs are then not one machine's).
    """
    from .decode import latency_stats, rates  # a shard's formulas; keeps imports light

    first = timings[0]
    what = f"{first.entry} {first.device} {first.split}"
    n = first.shard["count"]
    found = sorted(t.shard["index"] for t in timings)
    if found != list(range(n)) or any(t.shard["count"] != n for t in timings):
        raise PipelineError(f"{what}: shards {found} given, expected 0..{n - 1} of {n}")
    for key in _SHARED:
        if any(getattr(t, key) != getattr(first, key) for t in timings):
            raise PipelineError(f"{what}: shards differ in {key!r}; re-run their transcribe jobs")
    timings = sorted(timings, key=lambda t: t.shard["index"])
    rows = sorted((r for h in hyps for r in h), key=lambda r: r["id"])
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids) or len(ids) != sum(t.utterances for t in timings):
        raise PipelineError(f"{what}: the shards' hypotheses do not match their timings "
                            "(duplicate or missing ids)")
    total = {k: sum(getattr(t, k) for t in timings) for k in _SUMMED}
    fallbacks = [t.fallback_utterances for t in timings if t.fallback_utterances is not None]
    peaks = {k: max((getattr(t, k) for t in timings if getattr(t, k) is not None), default=None)
             for k in _PEAK}
    kinds = sorted({hardware(t.provenance) for t in timings})
    batch_seconds = [b for t in timings for b in t.batch_seconds]
    latency = latency_stats(batch_seconds) if first.regime == "latency" else {}
    timing = Timing(
        **{k: getattr(first, k) for k in _SHARED},
        **total,
        **rates(total["compute_seconds"], total["audio_seconds"], total["generated_tokens"],
                total["decoder_seconds"]),
        batch_seconds=batch_seconds,
        **peaks,
        # every shard has one (decoding.fallback is the same in all) or none has
        fallback_utterances=sum(fallbacks) if fallbacks else None,
        order=[uid for t in timings for uid in t.order],
        shards=n,
        mixed_hardware="; ".join(kinds) if len(kinds) > 1 else None,
        # the first shard's provenance stands for the run (the report's columns) ...
        provenance=first.provenance,
        # ... and every shard's is kept
        shard_runs=[{**t.shard, "utterances": t.utterances, "rtf": t.rtf,
                     "provenance": t.provenance} for t in timings],
        **latency,
    )
    return rows, timing


def build_score(hyp: list[dict], timing: Timing, meta: QuantMeta, fp32_meta: QuantMeta,
                model: str) -> Score:
    """The score of a gathered run: WER/CER, its timing, size against fp32, and what produced
    it (the entry's config, decoding, both steps' provenance)."""
    return Score(
        model=model, entry=timing.entry, split=timing.split, device=timing.device,
        facts=timing.facts, **score_rows(hyp), n_utterances=timing.utterances,
        audio_seconds=timing.audio_seconds, compute_seconds=timing.compute_seconds,
        rtf=timing.rtf, rtfx=timing.rtfx, threads=timing.threads,
        batch_size=timing.batch_size, shards=timing.shards,
        mixed_hardware=timing.mixed_hardware, **size_reduction(meta, fp32_meta),
        config=meta.config, decoding=timing.decoding,
        provenance={"quantize": meta.provenance, "transcribe": timing.provenance},
        **{k: getattr(timing, k) for k in SCORE_TIMING})


def score_run(hyp_paths, timing_paths, meta_path, fp32_meta_path, model: str, *, out,
              out_hyp, out_timing) -> Score:
    """The score step: gather a run's shards (``*_paths`` in shard order) into ``out_hyp`` and
    ``out_timing``, and write its Score to ``out``."""
    if len(hyp_paths) != len(timing_paths):
        raise PipelineError(f"score: {len(hyp_paths)} hypothesis files but {len(timing_paths)} "
                            "timing files")
    meta, fp32_meta = QuantMeta.read(meta_path), QuantMeta.read(fp32_meta_path)
    hyp, timing = gather_shards([read_jsonl(h) for h in hyp_paths],
                                [ShardTiming.read(t) for t in timing_paths])
    score = build_score(hyp, timing, meta, fp32_meta, model)
    write_jsonl(out_hyp, hyp)
    timing.write(out_timing)
    score.write(out)
    return score
