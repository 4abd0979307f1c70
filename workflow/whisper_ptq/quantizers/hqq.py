"""HQQ (half-quadratic quantization): weight-only 8 / 4 / 3 / 2-bit, per-group, CPU and GPU.

Every nn.Linear (or those of the entry's ``parts``; a ``recipe`` gives each part its own
bits / group size / axis), ``proj_out`` included (a separate quantized copy of the tied
``embed_tokens``), becomes an ``hqq.core.quantize.HQQLinear``: asymmetric (scale + zero
point per group), groups of ``group_size`` weights along ``axis`` (1 = along the input
features, hqq's default; 0 = along the output features), zero points rounded for 4-bit,
optimized by hqq's half-quadratic solver. Activations stay float (``compute_dtype``).

Backend: hqq's PyTorch backend (dequantize, then matmul in ``compute_dtype``), the one that
runs on both CPU and CUDA; the fused CUDA kernels (torchao int4, gemlite) need fp16/bf16,
axis=1 and extra packages, and are not used.

Packing: with axis=1, 4-bit packs pairs of groups and 2-bit quadruples, so a layer whose
number of groups (out × in / group_size) is odd (4-bit) or not a multiple of 4 (2-bit)
cannot be packed — multilingual tiny's 51865×384 ``proj_out`` hits this. Such a layer is
quantized with axis=0 instead (same bits and group size) and named in ``quant.json``.

Checkpoint: one ``model.safetensors`` — hqq's own "encoded" state dict of each HQQLinear
(its metadata stored as small tensors) plus the float modules' tensors; no pickle
(hqq's ``save_quantized`` writes a ``torch.save`` file, which we avoid).
"""

from __future__ import annotations

import warnings

from .. import PipelineError
from .base import Quantized, Quantizer, facts, float_parts

WEIGHTS = "model.safetensors"
DTYPES = ("float32", "float16", "bfloat16")
# nbits -> groups that axis-1 packing puts in one storage row
PACK_GROUPS = {8: 1, 4: 2, 3: 1, 2: 4, 1: 8}  # 3-bit packing pads by itself


def pack_axis(shape, nbits: int, group_size: int, axis: int) -> int:
    """The axis a layer of weight ``shape`` (out, in) can be packed along."""
    out_features, in_features = shape
    if axis == 1:
        if in_features % group_size:
            return 0
        if (out_features * in_features // group_size) % PACK_GROUPS[nbits]:
            return 0
    return axis


def _config(nbits, group_size, axis):
    from hqq.core.quantize import BaseQuantizeConfig

    return BaseQuantizeConfig(nbits=nbits, group_size=group_size, axis=axis)


def _set_backend():
    from hqq.core.quantize import HQQBackend, HQQLinear

    HQQLinear.set_backend(HQQBackend.PYTORCH)


class HQQ(Quantizer):
    library = "hqq"
    package = "hqq"
    schemes = {
        "int8": {"nbits": 8, "group_size": 64},
        "int4": {"nbits": 4, "group_size": 64},
        "int3": {"nbits": 3, "group_size": 64},
        "int2": {"nbits": 2, "group_size": 64},
    }
    options = {"group_size": (32, 64, 128, 256), "axis": (0, 1),
               "compute_dtype": DTYPES}
    supports_parts = True
    supports_recipe = True
    recipe_shared = ("compute_dtype",)  # one compute dtype for the whole model

    def validate(self, name, entry):
        out = super().validate(name, entry)
        if "recipe" in out:
            out["compute_dtype"] = out["recipe"][0]["compute_dtype"]
            return out
        out.setdefault("axis", 1)
        out.setdefault("compute_dtype", "float32")
        return out

    def unsupported(self, entry, device):
        if device == "cpu" and entry.get("compute_dtype", "float32") == "float16":
            return "hqq with float16 compute is a GPU setting (no fast fp16 matmul on CPU)"
        return super().unsupported(entry, device)

    def describe(self, entry):
        if "recipe" in entry:
            return self.describe_recipe(entry)
        return facts(weights=f"int{entry['nbits']}", activations=entry["compute_dtype"],
                     act_mode="none", symmetric=False, granularity="per-group",
                     group_size=entry["group_size"], parts=entry.get("parts"),
                     unquantized=float_parts(entry))

    def quantize(self, model, entry, calibration=None):
        import torch
        from hqq.core.quantize import HQQLinear

        _set_backend()
        dtype = getattr(torch, entry["compute_dtype"])
        model = model.float().cpu().eval()
        notes = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for item, names in self.layers(model, entry):
                for name in names:
                    linear = model.get_submodule(name)
                    axis = pack_axis(tuple(linear.weight.shape), item["nbits"],
                                     item["group_size"], item["axis"])
                    if axis != item["axis"]:
                        notes.append(f"{name}: quantized with axis={axis} (its groups cannot be "
                                     f"packed along axis={item['axis']})")
                    qlinear = HQQLinear(linear, _config(item["nbits"], item["group_size"], axis),
                                        compute_dtype=dtype, device="cpu", del_orig=False)
                    _replace(model, name, qlinear)
        model.to(dtype)  # the float modules compute in compute_dtype too
        return Quantized(model, tuple(notes))

    def save(self, model, entry, out_dir):
        from safetensors.torch import save_file

        save_file(_state(model), str(out_dir / WEIGHTS))

    def load(self, ckpt_dir, model_dir, entry, device):
        import torch
        from hqq.core.quantize import HQQLinear
        from safetensors.torch import load_file
        from transformers import GenerationConfig

        from ..modeling import HEAD_WEIGHT, empty_model, tie_head

        _set_backend()
        dtype = getattr(torch, entry["compute_dtype"])
        state = load_file(str(ckpt_dir / WEIGHTS), device=device)
        model = empty_model(model_dir)
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
        names = [n for _, item_names in self.layers(model, entry) for n in item_names]
        for name in names:
            prefix = name + "."
            sub = {k[len(prefix):]: state.pop(k) for k in list(state) if k.startswith(prefix)}
            if "W_q" not in sub:
                raise PipelineError(f"{ckpt_dir}/{WEIGHTS} has no quantized weight for {name}")
            qlinear = HQQLinear(None, None, compute_dtype=dtype, device=device, initialize=False)
            qlinear.load_state_dict(sub)
            _replace(model, name, qlinear)
        linears = tuple(n + "." for n in names)
        result = model.load_state_dict(state, strict=False, assign=True)
        tie_head(model, state)
        missing = [k for k in result.missing_keys
                   if not k.startswith(linears) and not (k == HEAD_WEIGHT and k not in state)]
        if missing or result.unexpected_keys:
            raise PipelineError(f"{ckpt_dir}/{WEIGHTS} does not match the model: missing "
                                f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}")
        return model.to(device).eval()


def _replace(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _state(model) -> dict:
    """Plain-tensor state dict: HQQLinear's encoded state (metadata as tensors) + the rest."""
    from hqq.core.quantize import HQQLinear

    state = {}
    hqq_names = set()
    for name, module in model.named_modules():
        if isinstance(module, HQQLinear):
            hqq_names.add(name)
            module.encoded_state_dict = True
            for k, v in module.state_dict().items():
                if v is not None:
                    state[f"{name}.{k}"] = v.detach().contiguous()
    from ..modeling import drop_tied_head

    for k, v in drop_tied_head(model.state_dict()).items():
        if k.rpartition(".")[0] not in hqq_names and not any(k.startswith(n + ".") for n in hqq_names):
            state[k] = v.detach().contiguous()
    return state


QUANTIZER = HQQ()
