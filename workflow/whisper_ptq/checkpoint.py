"""Quantize an entry into a checkpoint directory, and load it back for inference."""

from __future__ import annotations

import pickle
import re
import time
from pathlib import Path

from . import PipelineError, provenance, quantizers
from .io import atomic_path, dir_bytes
from .quantizers.base import linear_bytes, linear_names
from .records import QuantMeta

META = "quant.json"


def weights_bytes(ckpt_dir) -> int:
    """Bytes on disk of a checkpoint, without its small JSON metadata files."""
    return dir_bytes(ckpt_dir) - dir_bytes(ckpt_dir, suffixes=(".json",))


def save_checkpoint(name: str, entry: dict, model_dir, out_dir, calibration=None,
                    calibration_source: dict | None = None) -> QuantMeta:
    """Build the quantized model of ``entry`` from the fp32 model and save it to ``out_dir``.

    ``calibration`` is a list of input-feature batches (never the scored utterances) for
    schemes with static activations, ``calibration_source`` where they came from ({split, n,
    ids}). Returns the metadata written to ``quant.json``.
    """
    from .modeling import load_fp32

    q = quantizers.get(entry["library"])
    model = load_fp32(model_dir)
    names = linear_names(model)
    fp32_linear = linear_bytes(model, names)
    if q.needs_calibration(entry) and not calibration:
        raise PipelineError(f"entry {name!r} needs calibration data and none was given")
    t0 = time.perf_counter()
    qmodel, notes = q.quantize(model, entry, calibration)
    seconds = time.perf_counter() - t0
    # measured before save, which may change the state dict (hqq's: its encoded form)
    quantized_linear = q.linear_bytes(qmodel, names)
    prov = provenance.collect(library=entry["library"], package=q.package)
    with atomic_path(Path(out_dir), is_dir=True) as tmp:
        q.save(qmodel, entry, tmp)
        meta = QuantMeta(
            entry=name, config=entry, facts={"library": entry["library"], **q.describe(entry)},
            quantize_seconds=seconds, provenance=prov, linear_bytes=quantized_linear,
            fp32_linear_bytes=fp32_linear, calibration_batches=len(calibration or []),
            calibration=calibration_source if calibration else None, notes=list(notes),
            bytes_on_disk=weights_bytes(tmp))
        meta.write(tmp / META)
    return meta


def load_checkpoint(ckpt_dir, model_dir, device: str):
    """Load a checkpoint written by save_checkpoint onto ``device`` (no re-quantization)."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / META).is_file():
        raise PipelineError(f"{ckpt_dir} is not a complete checkpoint (no {META})")
    meta = QuantMeta.read(ckpt_dir / META)
    entry = meta.config
    q = quantizers.get(entry["library"])
    reason = q.unsupported(entry, device)
    if reason:
        raise PipelineError(f"entry {meta.entry!r} cannot run on {device}: {reason}")
    try:
        return q.load(ckpt_dir, model_dir, entry, device), meta
    except pickle.UnpicklingError as e:  # torch.load(weights_only=True) met a code object
        raise PipelineError(f"refusing to unpickle {_pickled_file(ckpt_dir)}: it contains code "
                            f"({_unpickle_reason(e)}); this pipeline never writes that, so the "
                            f"checkpoint was altered: re-create it (--forcerun quantize)") from None


def _pickled_file(ckpt_dir: Path) -> Path:
    """The checkpoint's pickle (torch.save) file, or the directory if not exactly one."""
    files = [p for p in sorted(ckpt_dir.iterdir()) if p.suffix in (".pt", ".pth", ".bin", ".pkl")]
    return files[0] if len(files) == 1 else ckpt_dir


def _unpickle_reason(e: Exception) -> str:
    """The unpickler's own reason ("Unsupported global: GLOBAL print"), without torch's advice
    to load it with weights_only=False."""
    m = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed| Please|\n|$)", str(e))
    return m.group(1).rstrip(".") if m else type(e).__name__
