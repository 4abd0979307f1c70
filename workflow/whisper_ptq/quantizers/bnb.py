"""bitsandbytes: NF4 / FP4 (with or without double quantization) and LLM.int8, via
transformers' ``BitsAndBytesConfig``. GPU as in the study; CPU too (bitsandbytes ≥ 0.47).

What bitsandbytes does to Whisper (0.50.2, transformers 5.24):

* nf4 / fp4: weight-only 4-bit, one absmax scale per block of 64 weights (symmetric,
  blockwise); with double quant the absmax scales are themselves quantized to 8 bits in
  blocks of 256. Activations stay in ``compute_dtype``.
* LLM.int8: int8 weights, absmax per output row (symmetric); activations quantized
  dynamically per row at run time, except outlier features (|x| > ``threshold``, 6.0),
  which go through an fp16 matmul ("mixed-precision decomposition").
* transformers skips the output head: ``proj_out`` stays the fp32 tensor tied to
  ``embed_tokens`` (stored once), unlike torch/quanto/hqq, which store a quantized copy.
* ``parts``: the nn.Linear layers outside them go to ``llm_int8_skip_modules`` (by full
  name, with ``proj_out``), which ``save_pretrained`` keeps in config.json for the reload.
  A ``parts`` list naming ``proj_out`` is refused (it cannot be quantized here).

Checkpoint: ``save_pretrained`` (safetensors + the quantization config in config.json);
``from_pretrained`` reloads it already quantized on the target device.

CPU pitfall (notes): the first forward pass on CPU may repack 4-bit weights in place, and
a checkpoint saved after that reloads wrong. ``save`` therefore refuses a model that has
already run a forward pass.
"""

from __future__ import annotations

import tempfile
import warnings
import weakref
from pathlib import Path

from .. import PipelineError
from .base import Quantized, Quantizer, facts, float_parts, linear_names

DTYPES = ("float32", "float16", "bfloat16")
BLOCK = 64  # bitsandbytes 4-bit blocksize
DQ_BLOCK = 256  # double-quant blocksize of the absmax scales
HEAD = "proj_out"  # the output head, which transformers never quantizes with bitsandbytes
# quantized models that have run a forward pass (save refuses them); kept here, not on the model
_RAN_FORWARD: weakref.WeakSet = weakref.WeakSet()


class BitsAndBytes(Quantizer):
    library = "bnb"
    package = "bitsandbytes"
    schemes = {
        "nf4": {"double_quant": False},
        "fp4": {"double_quant": False},
        "int8": {"threshold": 6.0},
    }
    options = {"double_quant": bool, "compute_dtype": DTYPES, "threshold": float}
    supports_parts = True

    def validate(self, name, entry):
        entry = dict(entry)
        if isinstance(entry.get("threshold"), int) and not isinstance(entry["threshold"], bool):
            entry["threshold"] = float(entry["threshold"])
        out = super().validate(name, entry)
        if HEAD in out.get("parts", []):
            raise PipelineError(f"entry {name!r}: bitsandbytes keeps {HEAD} tied to "
                                f"embed_tokens in fp32; part {HEAD!r} cannot be quantized by it")
        if out["scheme"] == "int8":
            if "double_quant" in out or "compute_dtype" in out:
                raise PipelineError(f"entry {name!r}: bnb int8 (LLM.int8) takes only 'threshold'")
        else:
            if "threshold" in out:
                raise PipelineError(f"entry {name!r}: 'threshold' is an LLM.int8 option, not {out['scheme']}'s")
            out.setdefault("compute_dtype", "float32")
        return out

    def describe(self, entry):
        unquantized = float_parts(entry) + [f"{HEAD} (kept tied to embed_tokens, fp32)"]
        parts = entry.get("parts")
        if entry["scheme"] == "int8":
            return facts(weights="int8", activations="int8 (fp16 outliers > "
                         f"{entry['threshold']:g})", act_mode="dynamic", symmetric=True,
                         granularity="per-channel", unquantized=unquantized, parts=parts)
        weights = entry["scheme"] + (" + double-quant int8 scales" if entry["double_quant"] else "")
        return facts(weights=weights, activations=entry["compute_dtype"], act_mode="none",
                     symmetric=True, granularity="per-group", group_size=BLOCK,
                     unquantized=unquantized, parts=parts)

    def targets(self, model, entry):
        return [n for n in super().targets(model, entry) if n != HEAD]

    def config(self, entry, skip=None):
        """``skip``: full names of nn.Linear layers to leave float (None: transformers' default,
        the output head)."""
        import torch
        from transformers import BitsAndBytesConfig

        if entry["scheme"] == "int8":
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(entry["threshold"]),
                                      llm_int8_skip_modules=skip)
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=entry["scheme"],
            bnb_4bit_use_double_quant=bool(entry["double_quant"]),
            bnb_4bit_compute_dtype=getattr(torch, entry["compute_dtype"]),
            llm_int8_skip_modules=skip,
        )

    def quantize(self, model, entry, calibration=None):
        import torch
        from transformers import WhisperForConditionalGeneration

        skip = None
        if entry.get("parts"):
            chosen = set(self.targets(model, entry))
            skip = [n for n in linear_names(model) if n not in chosen]
        # bitsandbytes quantizes while loading: round-trip the fp32 model through a
        # temporary directory (so the in-memory model given here is what gets quantized)
        with tempfile.TemporaryDirectory(prefix="bnb-fp32-") as tmp:
            model.float().cpu().save_pretrained(tmp, safe_serialization=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                qmodel = WhisperForConditionalGeneration.from_pretrained(
                    tmp, quantization_config=self.config(entry, skip), device_map="cpu",
                    dtype=torch.float32)
        qmodel.generation_config = model.generation_config
        qmodel.eval()
        _track_forward(qmodel)
        return Quantized(qmodel)

    def save(self, model, entry, out_dir):
        if model in _RAN_FORWARD:
            raise PipelineError(
                "bitsandbytes model has already run a forward pass: on CPU that can repack "
                "its 4-bit weights in place and the saved checkpoint would reload wrong; "
                "save it right after quantizing"
            )
        model.save_pretrained(out_dir, safe_serialization=True)

    def load(self, ckpt_dir, model_dir, entry, device):
        from transformers import WhisperForConditionalGeneration

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = WhisperForConditionalGeneration.from_pretrained(
                Path(ckpt_dir), device_map=device)
        _silence_int8_cast_warning()
        return model.eval()


def _track_forward(model):
    """Note the model once any forward pass has run (every pass starts in the encoder)."""
    model.model.encoder.register_forward_pre_hook(lambda module, args: _RAN_FORWARD.add(model))
    _silence_int8_cast_warning()


class _DropCastMessage:
    def filter(self, record):
        return "inputs will be cast" not in record.getMessage()


def _silence_int8_cast_warning():
    """Drop "MatMul8bitLt: inputs will be cast ... to float16", logged on every matmul."""
    import logging

    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropCastMessage) for f in logger.filters):
        logger.addFilter(_DropCastMessage())


QUANTIZER = BitsAndBytes()
