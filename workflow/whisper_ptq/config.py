"""The study as configured: models, splits, devices and entries, checked before any job.

``snakemake.utils.validate`` checks types against ``workflow/schemas/config.schema.yaml``
and fills its defaults (the only place they are written: ``Study`` reads a validated config
and never supplies its own); ``Study`` then checks what a schema cannot: libraries, schemes,
library × device support, model directories, the ``only`` filter.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from . import PipelineError, quantizers
from .modeling import check_source, model_tag
from .schema import SCHEMA

# what a sweep without `parts:` restricts its entry to, one part at a time
SWEEP_PARTS = ["encoder", "decoder", "encoder.self_attn", "encoder.ffn", "decoder.self_attn",
               "decoder.cross_attn", "decoder.ffn", "proj_out"]


def as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def validate_schema(config: dict) -> dict:
    """Validate (and fill defaults) like the Snakefile does; PipelineError names the key."""
    try:
        from snakemake.utils import validate
    except ModuleNotFoundError:  # a bare runtime image (GPU kit): defaults only, no type check
        from .schema import fill_defaults

        return fill_defaults(config)

    try:
        validate(config, str(SCHEMA))
    except Exception as e:  # WorkflowError with the jsonschema message
        raise PipelineError(f"config.yaml is invalid: {e}") from e
    return config


def cuda_visible() -> bool:
    """Whether this machine can run CUDA jobs. Cheap where there is no NVIDIA driver: torch
    (seconds to import) is only asked when the driver's device files exist."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    if not (os.path.exists("/proc/driver/nvidia") or glob.glob("/dev/nvidia[0-9]*")):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_devices(value, cuda: bool) -> list[str]:
    """The config's `devices` as a list: `auto` = cpu, plus cuda where jobs can use CUDA.

    ``cuda`` says whether the machines the jobs run on have CUDA (this one, or a cluster's
    GPU nodes); an explicit cuda without it stops here, before any job runs.
    """
    if value == "auto":
        return ["cpu", "cuda"] if cuda else ["cpu"]
    devices = as_list(value)
    if "cuda" in devices and not cuda:
        raise PipelineError(
            "config 'devices' asks for cuda, but this machine has no CUDA device "
            "(torch.cuda.is_available() is False); use devices=cpu or devices=auto, or "
            "submit to a GPU cluster with --profile slurm")
    return devices


@dataclass(frozen=True)
class Job:
    model: str
    entry: str
    device: str
    split: str


class Study:
    def __init__(self, config: dict, *, cuda: bool = True):
        """``cuda``: whether jobs run where CUDA is available (see resolve_devices)."""
        # validated here too (it fills the schema's defaults in place), so a Study made from
        # a hand-written dict has the same defaults as the Snakefile's
        self.config = config = validate_schema(config)
        sources = as_list(config["model"])
        self.models: dict[str, str] = {}
        for src in sources:
            check_source(src)
            tag = model_tag(src)
            if tag in self.models:
                raise PipelineError(f"config 'model': two sources share the name {tag!r}")
            self.models[tag] = src
        self.splits = as_list(config["splits"])
        self.devices = resolve_devices(config["devices"], cuda)
        self.limit = config.get("limit")
        self.shard_size = config.get("shard_size") or None  # null / 0: one shard per split
        self.decoding = dict(config.get("decoding") or {})
        self.timing = dict(config.get("timing") or {})
        self.threads = config["threads"]
        self.calibration = dict(config["calibration"])
        self.entries: dict[str, dict] = {}
        for name, raw in config["entries"].items():
            try:
                library = quantizers.get(raw["library"])
            except PipelineError as e:
                raise PipelineError(f"config entry {name!r}: {e}") from None
            self.entries[name] = library.validate(name, raw)
        self.sweep = self._sweep(config.get("sweep"))
        only = as_list(config["only"])
        if config["only"] is not None and not only:
            raise PipelineError("config 'only' is empty: name at least one entry, or leave it "
                                "out (null) to run every entry")
        unknown = [n for n in only if n not in self.entries]
        if unknown:
            raise PipelineError(
                f"config 'only': unknown entr{'y' if len(unknown) == 1 else 'ies'} "
                f"{', '.join(unknown)}; known: {', '.join(self.entries)}"
            )
        self.selected = [n for n in self.entries if not only or n in only
                         or (self.sweep and n in self.sweep["parts"].values()
                             and self.sweep["entry"] in only)]
        if "fp32" not in self.entries or self.entries["fp32"]["scheme"] != "fp32":
            raise PipelineError("config 'entries' must define the fp32 baseline as 'fp32' "
                                "(library: fp, scheme: fp32): size reduction is against it")

    def _sweep(self, sweep: dict | None) -> dict | None:
        """Sensitivity sweep: one entry per part, ``<entry>+<part>`` = the entry's scheme on
        that part only (whisper_ptq.parts). Selected whenever its base entry is."""
        if not sweep:
            return None
        base = sweep["entry"]
        if base not in self.entries:
            raise PipelineError(f"config 'sweep': unknown entry {base!r}; known: "
                                f"{', '.join(self.entries)}")
        raw = self.config["entries"][base]
        if raw.get("parts") or raw.get("recipe"):
            raise PipelineError(f"config 'sweep': entry {base!r} already restricts 'parts' "
                                "(or is a recipe); sweep a plain entry")
        explicit = sweep.get("parts") is not None
        names = {}
        for part in sweep["parts"] if explicit else SWEEP_PARTS:
            name = f"{base}+{part}"
            if name in self.entries:
                raise PipelineError(f"config 'sweep': entry {name!r} is also defined in 'entries'")
            try:
                self.entries[name] = quantizers.get(raw["library"]).validate(
                    name, {**raw, "parts": [part]})
            except PipelineError:
                if explicit:
                    raise
                continue  # a default part this library cannot take (bnb: proj_out)
            names[part] = name
        return {"entry": base, "parts": names}

    def entry_order(self) -> list[str]:
        """Entry names in the order the report lists them: config order, with the sweep's
        entries right after the entry they restrict."""
        swept = list(self.sweep["parts"].values()) if self.sweep else []
        order = []
        for name in self.entries:
            if name not in swept:
                order += [name] + (swept if self.sweep and name == self.sweep["entry"] else [])
        return order

    def devices_of(self, name: str) -> list[str]:
        entry = self.entries[name]
        return [d for d in self.devices if d in entry.get("devices", self.devices)]

    def calibration_excluded(self, split: str) -> int:
        """How many calibration utterances a split's scoring excludes (0: not the calibration split)."""
        # a noisy derived split (test-clean+white10) holds the same utterances as its clean one
        from .noise import base_split

        return self.calibration["n"] if base_split(split) == self.calibration["split"] else 0

    def needs_calibration(self, name: str) -> bool:
        entry = self.entries[name]
        return quantizers.get(entry["library"]).needs_calibration(entry)

    def unsupported_reason(self, name: str, device: str) -> str | None:
        entry = self.entries[name]
        library = quantizers.get(entry["library"])
        if "fallback" in self.decoding and not library.supports_fallback:
            return (f"decoding.fallback: library {library.library!r} decodes inside its own "
                    "runtime, whose fallback is not openai-whisper's rule")
        return library.unsupported(entry, device)

    def jobs(self) -> list[Job]:
        return [Job(m, e, d, s) for m in self.models for e in self.selected
                for d in self.devices_of(e) if not self.unsupported_reason(e, d)
                for s in self.splits]

    def unsupported(self) -> list[dict]:
        return [{"model": m, "entry": e, "device": d, "reason": r} for m in self.models
                for e in self.selected for d in self.devices_of(e)
                if (r := self.unsupported_reason(e, d))]


def load_study(path, overrides: dict | None = None, *, cuda: bool = True) -> Study:
    import yaml

    config = yaml.safe_load(Path(path).read_text()) or {}
    config.update(overrides or {})
    return Study(config, cuda=cuda)
