"""PyTorch native dynamic int8 (``torch.ao.quantization.quantize_dynamic``), CPU only.

Weights int8 symmetric, per-tensor (the study's) or per-channel; activations quantized
dynamically per batch at run time. Only nn.Linear layers (proj_out included, as a separate
int8 copy of the tied embedding) are quantized.
"""

from __future__ import annotations

import warnings

from .. import PipelineError
from .base import Quantized, Quantizer, facts, float_parts

WEIGHTS = "model.pt"


def _quantize_dynamic(model, granularity, targets=None):
    """``targets``: names of the nn.Linear modules to quantize (None = every nn.Linear)."""
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    qconfig = per_channel_dynamic_qconfig if granularity == "per-channel" else default_dynamic_qconfig
    spec = {torch.nn.Linear: qconfig} if targets is None else {n: qconfig for n in targets}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


class TorchDynamic(Quantizer):
    library = "torch"
    package = "torch"
    schemes = {"int8-dynamic": {"granularity": "per-tensor"}}
    options = {"granularity": ("per-tensor", "per-channel")}
    devices = ("cpu",)
    supports_parts = True

    def unsupported(self, entry, device):
        if device != "cpu":
            return "torch.ao dynamic quantization has CPU kernels only (fbgemm/qnnpack), no CUDA"
        return None

    def describe(self, entry):
        return facts(weights="int8", activations="int8", act_mode="dynamic", symmetric=True,
                     granularity=entry["granularity"], parts=entry.get("parts"),
                     unquantized=float_parts(entry))

    def quantize(self, model, entry, calibration=None):
        model = model.float().cpu()
        targets = self.targets(model, entry) if entry.get("parts") else None
        return Quantized(_quantize_dynamic(model, entry["granularity"], targets))

    def save(self, model, entry, out_dir):
        import torch

        torch.save(model.state_dict(), out_dir / WEIGHTS)

    def load(self, ckpt_dir, model_dir, entry, device):
        import torch

        from ..modeling import load_fp32

        if device != "cpu":
            raise PipelineError(self.unsupported(entry, device))
        model = load_fp32(model_dir)
        targets = self.targets(model, entry) if entry.get("parts") else None
        model = _quantize_dynamic(model, entry["granularity"], targets)
        state = torch.load(ckpt_dir / WEIGHTS, weights_only=True, map_location="cpu")
        model.load_state_dict(state)
        return model.eval()


QUANTIZER = TorchDynamic()
