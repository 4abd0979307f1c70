"""Floating-point baselines: fp32 (CPU, GPU) and fp16 / bf16 (GPU rows)."""

from __future__ import annotations

from .base import Quantized, Quantizer, facts

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class FloatBaseline(Quantizer):
    library = "fp"
    package = "torch"
    schemes = {name: {} for name in DTYPES}

    def unsupported(self, entry, device):
        if entry["scheme"] != "fp32" and device == "cpu":
            return f"{entry['scheme']} is a GPU baseline (half precision matmuls are not a CPU deployment path)"
        return super().unsupported(entry, device)

    def describe(self, entry):
        return facts(weights=DTYPES[entry["scheme"]], activations=DTYPES[entry["scheme"]],
                     granularity="none", unquantized=["everything (no quantization)"])

    def quantize(self, model, entry, calibration=None):
        import torch

        return Quantized(model.to(getattr(torch, DTYPES[entry["scheme"]])))

    def save(self, model, entry, out_dir):
        model.save_pretrained(out_dir, safe_serialization=True)

    def load(self, ckpt_dir, model_dir, entry, device):
        import torch
        from transformers import WhisperForConditionalGeneration

        dtype = getattr(torch, DTYPES[entry["scheme"]])
        model = WhisperForConditionalGeneration.from_pretrained(ckpt_dir, dtype=dtype)
        return model.eval().to(device)


QUANTIZER = FloatBaseline()
