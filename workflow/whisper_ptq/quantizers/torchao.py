"""torchao (PyTorch's successor to ``torch.ao`` quantization): int8 weight-only, int8
dynamic activations + int8 weights, int4 weight-only; optionally under ``torch.compile``.

What torchao does to Whisper (0.18.0, torch 2.13):

* int8wo (``Int8WeightOnlyConfig``): int8 weights, one absmax scale per output row
  (symmetric); activations stay float32 (weights dequantized in the matmul).
* int8dyn (``Int8DynamicActivationInt8WeightConfig``): the same weights; activations
  quantized per token (row) at run time, symmetric, int8 x int8 matmul (``torch._int_mm``).
* int4wo, CPU: ``PrototypeInt4WeightOnlyConfig(group_size)`` (``Int4OpaqueTensor``, packed for
  ``_weight_int4pack_mm_for_cpu``): 4-bit asymmetric (scale + zero point per group,
  tinygemm's choice). The output head stays float and tied to the embedding: its rows
  (51864 / 51865) do not pack. CUDA int4 is another tensor type, ``Int4WeightOnlyConfig``:
  its default "plain" packing needs the ``mslk`` package, "tile_packed_to_4d" (tinygemm)
  needs bfloat16 weights and packs them on a GPU of compute capability >= 8 at
  quantization; checkpoints here are quantized once, on CPU, so int4wo on CUDA is an
  unsupported row. The int8 tensors move to CUDA at load (torchao's int8 matmul there:
  ``torch._int_mm`` through cuBLAS, a float fallback for shapes it refuses).
* Every nn.Linear is quantized (``proj_out`` as its own int8 copy, as with torch/quanto/hqq).

``compile: true`` wraps encoder, decoder and head in ``torch.compile(dynamic=True)`` at load
(torchao's kernels are meant to be fused by inductor); compilation happens in the untimed
warm-up batches. Checkpoint: the int8 schemes as ``model.safetensors`` via torchao's
``flatten_tensor_state_dict`` (no pickle); int4's tensor type has no safetensors support, so
``model.pt`` read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from .. import PipelineError
from .base import Quantized, Quantizer, facts, float_parts

SAFETENSORS, PICKLE_FREE_PT = "model.safetensors", "model.pt"
HEAD = "proj_out"


def _config(entry):
    if entry["scheme"] == "int8wo":
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()
    if entry["scheme"] == "int8dyn":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        return Int8DynamicActivationInt8WeightConfig()
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=entry["group_size"])


def _nbytes(t) -> int:
    """Bytes of a tensor, a torchao tensor subclass counted by its inner tensors."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_nbytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


class TorchAO(Quantizer):
    library = "torchao"
    package = "torchao"
    schemes = {"int8wo": {"compile": False}, "int8dyn": {"compile": False},
               "int4wo": {"compile": False, "group_size": 128}}
    options = {"compile": bool, "group_size": (32, 64, 128, 256)}

    def validate(self, name, entry):
        out = super().validate(name, entry)
        if "group_size" in out and out["scheme"] != "int4wo":
            raise PipelineError(f"entry {name!r}: 'group_size' is an int4wo option, not "
                                f"{out['scheme']}'s (torchao's int8 schemes are per-channel)")
        return out

    def unsupported(self, entry, device):
        if entry["scheme"] == "int4wo" and device == "cuda":
            return ("torchao's CUDA int4 (Int4WeightOnlyConfig: tile-packed bfloat16 packed on "
                    "the GPU, or 'plain' with the mslk package) cannot be made from checkpoints "
                    "quantized on CPU, whose int4 format (Int4OpaqueTensor) has CPU kernels only")
        return super().unsupported(entry, device)

    def describe(self, entry):
        scheme = entry["scheme"]
        if scheme == "int4wo":
            out = facts(weights="int4 asym. (scale + zero point per group)", granularity="per-group",
                        group_size=entry["group_size"], symmetric=False,
                        unquantized=float_parts(entry) + [f"{HEAD} (kept tied to embed_tokens, fp32)"])
        else:
            dyn = scheme == "int8dyn"
            out = facts(weights="int8", activations="int8 (per token)" if dyn else "float32",
                        act_mode="dynamic" if dyn else "none", symmetric=True,
                        granularity="per-channel", unquantized=float_parts(entry))
        return {**out, "compile": entry["compile"]}

    def targets(self, model, entry):
        names = super().targets(model, entry)
        return [n for n in names if n != HEAD] if entry["scheme"] == "int4wo" else names

    # -- model ----------------------------------------------------------------------------
    def quantize(self, model, entry, calibration=None):
        import torch
        from torchao.quantization import quantize_

        model = model.float().cpu()
        chosen = set(self.targets(model, entry))
        quantize_(model, _config(entry),
                  filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn in chosen)
        # torchao leaves a layer float when its shape does not fit the scheme: say so
        notes = tuple(f"{n}: left float by torchao (shape {tuple(model.get_submodule(n).weight.shape)})"
                      for n in sorted(chosen)
                      if not hasattr(model.get_submodule(n).weight, "__tensor_flatten__"))
        return Quantized(model, notes)

    def linear_bytes(self, model, names):
        return sum(_nbytes(t) for n in names for t in model.get_submodule(n).state_dict().values())

    def save(self, model, entry, out_dir):
        import torch

        state = model.state_dict()
        if entry["scheme"] == "int4wo":
            torch.save(state, out_dir / PICKLE_FREE_PT)  # tensors only: weights_only reload
            return
        from safetensors.torch import save_file
        from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

        tensors, metadata = flatten_tensor_state_dict(state)
        save_file(tensors, str(out_dir / SAFETENSORS), metadata=metadata)

    def load(self, ckpt_dir, model_dir, entry, device):
        import torch

        from ..modeling import load_fp32

        reason = self.unsupported(entry, device)
        if reason:
            raise PipelineError(reason)
        if entry["scheme"] == "int4wo":
            # importing the tensor's module registers it as a weights_only safe global: a fresh
            # process (a transcribe job) has not imported it yet
            import torchao.prototype.quantization.int4  # noqa: F401

            state = torch.load(ckpt_dir / PICKLE_FREE_PT, weights_only=True, map_location="cpu")
        else:
            from safetensors import safe_open
            from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

            with safe_open(str(ckpt_dir / SAFETENSORS), "pt") as f:
                metadata = f.metadata()
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            state, rest = unflatten_tensor_state_dict(tensors, metadata)
            state = {**rest, **state}
        model = load_fp32(model_dir)
        model.load_state_dict(state, assign=True)  # the quantized tensors replace the weights
        if entry["scheme"] == "int4wo":
            model.proj_out.weight = model.model.decoder.embed_tokens.weight  # re-tie the head
        model = model.eval().to(device)
        if entry["compile"]:
            for module in (model.model.encoder, model.model.decoder, model.proj_out):
                module.compile(dynamic=True)
        return model


QUANTIZER = TorchAO()
