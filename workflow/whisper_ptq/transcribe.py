"""The transcribe step: load a checkpoint, decode one shard of a split (``decode``), write
its hypotheses and timing. This is the layer above ``checkpoint``; the decoding loop itself
lives below it, in ``decode``.
"""

from __future__ import annotations

from . import PipelineError
from .decode import run, shard_bounds  # noqa: F401  (rules/common.smk imports shard_bounds here)
from .features import calibration_ids, load_manifest
from .io import write_jsonl
from .records import ShardTiming


def excluded_ids(manifest_path, calib_n: int, split: str = "") -> list[str]:
    """The calibration utterances a split leaves out (none unless it calibrates: calib_n > 0)."""
    return calibration_ids(load_manifest(manifest_path), calib_n, split) if calib_n else []


def transcribe_checkpoint(ckpt_dir, model_dir, features_path, manifest_path, device, decoding,
                          out_hyp, out_timing, *, threads, limit=None, exclude=(), split="",
                          timing=None, shard=(0, 1), shard_size=None) -> ShardTiming:
    from transformers import WhisperTokenizer

    from . import provenance
    from .checkpoint import load_checkpoint
    from .modeling import check_device, set_threads

    device = check_device(device)
    threads = set_threads(threads)
    model, meta = load_checkpoint(ckpt_dir, model_dir, device)
    tokenizer = WhisperTokenizer.from_pretrained(model_dir)
    rows, measured = run(model, tokenizer, features_path, manifest_path, device, decoding,
                         limit=limit, exclude=exclude, split=split, threads=threads,
                         timing=timing, shard=shard, shard_size=shard_size)
    if not rows:
        raise PipelineError(f"split {split}: nothing was transcribed")
    timing = ShardTiming(**measured, entry=meta.entry, split=split, facts=meta.facts,
                         decoding=decoding, provenance=provenance.collect(threads),
                         runtime=getattr(model, "runtime_info", None))
    write_jsonl(out_hyp, rows)
    timing.write(out_timing)
    return timing
