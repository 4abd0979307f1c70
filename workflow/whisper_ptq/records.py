"""One typed record per step output; each field is listed here once.

* ``QuantMeta``: quantize → ``checkpoints/<entry>/quant.json`` and ``checkpoints/<entry>.json``;
* ``ShardTiming``: transcribe → ``<split>/shard-<i>of<n>.timing.json`` (one shard);
* ``Timing``: score → ``<split>.timing.json`` (the shards gathered, ``scoring.gather_shards``);
* ``Score``: score → ``<split>.score.json`` (``scoring.build_score``), read by the report.

Writers build the record, readers get it back (``read``); the JSON on disk holds exactly
its fields (``to_json``). A file with a missing or unknown key is one PipelineError naming
the file and the key, never a KeyError deep in a later step.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from . import PipelineError
from .io import read_json, write_json

# metadata of a field that is written only when set (e.g. the latency regime's percentiles)
OMIT_NONE = {"omit_none": True}


class Record:
    """to_json / from_json / read / write for the dataclasses below."""

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.metadata.get("omit_none") and out[f.name] is None:
                del out[f.name]
        return out

    @classmethod
    def from_json(cls, data, source: str | os.PathLike = "") -> Record:
        """The record of a JSON object; ``source`` (the file) names the fault."""
        what = f"{source or 'JSON'} ({cls.__name__})"
        if not isinstance(data, dict):
            raise PipelineError(f"{what}: expected a JSON object, found {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise PipelineError(f"{what}: unknown key {unknown[0]!r}; written by another "
                                "version of the pipeline? re-run the step that wrote it")
        required = [n for n, f in known.items() if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise PipelineError(f"{what}: key {missing[0]!r} is missing; written by another "
                                "version of the pipeline? re-run the step that wrote it")
        return cls(**data)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Record:
        return cls.from_json(read_json(path), path)

    def write(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_json())


@dataclass(kw_only=True)
class QuantMeta(Record):
    """What ``checkpoint.save_checkpoint`` made of one entry."""

    entry: str
    config: dict  # the validated entry (defaults filled in)
    facts: dict  # {"library": ..., **Quantizer.describe(entry)}
    quantize_seconds: float
    # versions, CPU/GPU, threads, git commit, SLURM job of this quantization
    provenance: dict
    linear_bytes: int
    fp32_linear_bytes: int
    calibration_batches: int
    # which utterances calibrated it ({split, n, ids}): with the checkpoint, not beside it
    calibration: dict | None
    # per-layer deviations from the scheme the library had to make (Quantized.notes)
    notes: list[str]
    bytes_on_disk: int  # the checkpoint's weight files, without its JSON metadata


@dataclass(kw_only=True)
class _TimingFields(Record):
    """What a shard's and a gathered timing share (the protocol: ``decode``'s module doc)."""

    entry: str
    split: str
    device: str
    regime: str
    facts: dict
    decoding: dict
    utterances: int
    audio_seconds: float
    compute_seconds: float
    encoder_seconds: float
    decoder_seconds: float
    longform_seconds: float
    generated_tokens: int
    tokens_per_second: float | None
    rtf: float
    rtfx: float | None
    batches: int
    batch_size: int
    batch_seconds: list[float]
    warmup_batches: int
    threads: int
    peak_rss_mb: float | None
    cuda_peak_allocated_mb: float | None
    cuda_peak_reserved_mb: float | None
    sorted_by_length: bool
    order: list[str]  # utterance ids in the order transcribed
    provenance: dict | None
    # latency regime only (decode.latency_stats)
    latency_p50_s: float | None = field(default=None, metadata=OMIT_NONE)
    latency_p90_s: float | None = field(default=None, metadata=OMIT_NONE)
    # peak RSS of the timed loop alone, and the resident set after it with free memory given
    # back (decode.memory_stats); None in timings written before
    timed_peak_rss_mb: float | None = field(default=None, metadata=OMIT_NONE)
    resident_rss_mb: float | None = field(default=None, metadata=OMIT_NONE)
    # with decoding.fallback: utterances kept at a temperature above 0 (decode.with_fallback)
    fallback_utterances: int | None = field(default=None, metadata=OMIT_NONE)


@dataclass(kw_only=True)
class ShardTiming(_TimingFields):
    """One transcribe job: shard ``shard["index"]`` of ``shard["count"]``."""

    shard: dict  # {index, count, start, stop, size}
    # a non-torch runtime's own threads and compute type (CTranslate2), else None
    runtime: dict | None


@dataclass(kw_only=True)
class Timing(_TimingFields):
    """A run's shards gathered: summed times, pooled RTF (``scoring.gather_shards``)."""

    shards: int
    # the CPU / GPU models when the shards did not all run on the same kind, else None
    mixed_hardware: str | None
    # every shard's {index, count, start, stop, size, utterances, rtf, provenance}
    shard_runs: list[dict]


@dataclass(kw_only=True)
class Score(Record):
    """WER/CER of one model × entry × device × split with what produced it."""

    model: str
    entry: str
    split: str
    device: str
    facts: dict
    wer: float  # %, after the Whisper English normalizer
    cer: float
    words: dict  # summed edit counts and rate (scoring.aggregate)
    chars: dict
    utterances: list[dict]  # per-utterance edit counts (the bootstrap's input)
    n_utterances: int
    audio_seconds: float
    compute_seconds: float
    rtf: float
    rtfx: float | None
    threads: int
    batch_size: int
    shards: int
    mixed_hardware: str | None
    bytes_on_disk: int
    fp32_bytes_on_disk: int
    size_reduction: float  # %, whole checkpoint against fp32's
    linear_size_reduction: float  # %, the nn.Linear layers alone
    config: dict  # the entry as validated
    decoding: dict
    provenance: dict[str, Any]  # {"quantize": QuantMeta.provenance, "transcribe": Timing's}
    encoder_seconds: float | None = field(default=None, metadata=OMIT_NONE)
    decoder_seconds: float | None = field(default=None, metadata=OMIT_NONE)
    peak_rss_mb: float | None = field(default=None, metadata=OMIT_NONE)
    timed_peak_rss_mb: float | None = field(default=None, metadata=OMIT_NONE)
    resident_rss_mb: float | None = field(default=None, metadata=OMIT_NONE)
    cuda_peak_allocated_mb: float | None = field(default=None, metadata=OMIT_NONE)
    fallback_utterances: int | None = field(default=None, metadata=OMIT_NONE)
    latency_p50_s: float | None = field(default=None, metadata=OMIT_NONE)
    latency_p90_s: float | None = field(default=None, metadata=OMIT_NONE)


# what a Score carries from its gathered Timing beside RTF: its fields with a default, None
# when read back from a score file written before they were carried
SCORE_TIMING = tuple(f.name for f in dataclasses.fields(Score) if f.default is None)
