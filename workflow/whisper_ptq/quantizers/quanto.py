"""Optimum-Quanto: weight-only int8 / int4 / int2 / float8 (e4m3), or int8 / float8 weights
with *static* int8 / float8 activations calibrated on never-scored utterances. CPU and GPU.

What quanto does to a Whisper nn.Linear (optimum-quanto 0.2.7, ``QModuleMixin``):

* 8-bit weights (int8, float8): symmetric absmax, one scale per output channel.
* int4 / int2 weights: asymmetric (scale + shift, ``MaxOptimizer``), groups of 128 input
  features (quanto lowers 128 by 32 until it divides ``in_features``; 512/768/1024/1280
  and their 4× are multiples of 128, so Whisper gets 128).
* activations (static entries): symmetric, one input and one output scale per layer (a
  per-tensor scale, calibrated then frozen). ``observer: minmax`` (default) keeps the
  absmax over every calibration step; ``observer: moving-average`` is quanto's own
  ``Calibration(momentum=0.9)``, an average of per-step absmaxes that clips what exceeds
  it: with 4 calibration utterances it took tiny.en from 5.5 to 40.9 WER (minmax: 5.1). On the
  whole model quanto also gives the layer norms static int8 outputs; an entry restricted
  to ``parts`` (or a recipe item) activation-quantizes the nn.Linear layers of its parts only.

Every nn.Linear is quantized (or those of the entry's ``parts``; a ``recipe`` gives each
part its own weight / activation types), ``proj_out`` too (a separate quantized copy of
the tied ``embed_tokens``), but ``proj_out``'s activations stay float: activation-quantizing it
crashes ``generate()`` (see the notes). Calibration (streamline mode, quanto's default)
also leaves float the outputs of layers that only feed GELU / residual adds. Checkpoint:
``model.safetensors`` (the frozen state dict, quantized tensors flattened into plain
tensors) + ``quantization_map.json`` + ``float_outputs.json`` (those streamlined layers);
loading builds the model on the meta device and ``requantize``s it on the target device.
"""

from __future__ import annotations

import json
import warnings

from .. import PipelineError
from .base import Quantized, Quantizer, facts, float_parts

WEIGHTS = "model.safetensors"
QMAP = "quantization_map.json"
FLOAT_OUTPUTS = "float_outputs.json"
# config value -> (quanto qtype name, facts format)
WEIGHT_TYPES = {"int8": ("qint8", "int8"), "int4": ("qint4", "int4"), "int2": ("qint2", "int2"),
                "float8": ("qfloat8", "float8_e4m3fn")}
ACT_TYPES = {"none": (None, "float32"), "int8": ("qint8", "int8"), "float8": ("qfloat8", "float8_e4m3fn")}
# how calibration turns activations into scales; the first is the default
OBSERVERS = ("minmax", "moving-average")
GROUP_SIZE = 128  # quanto's int4/int2 group size for Whisper's linear layers
# greedy tokens decoded per calibration utterance (LibriSpeech utterances need < 100)
CALIBRATION_MAX_TOKENS = 96
# layer left with float activations (activation-quantizing it crashes generate())
FLOAT_ACT_LAYER = "proj_out"


def _qtype(name):
    import optimum.quanto as oq

    return None if name is None else getattr(oq, name)


def _minmax_calibration():
    """quanto's ``Calibration`` keeping the largest absmax seen, not a moving average."""
    import torch
    from optimum.quanto import Calibration, absmax_scale
    from optimum.quanto.nn import QModuleMixin
    from optimum.quanto.tensor import ActivationQBytesTensor

    class MinMaxCalibration(Calibration):
        def __enter__(self):
            self._seen = set()
            return super().__enter__()

        def _keep_max(self, module, attr, scale):
            if (module, attr) in self._seen:
                scale = torch.maximum(getattr(module, attr), scale)
            setattr(module, attr, scale)
            self._seen.add((module, attr))

        def calibrate_input(self, module, input, momentum=0.9):
            if (isinstance(module, QModuleMixin) and module.activation_qtype is not None
                    and not isinstance(input[0], ActivationQBytesTensor)):
                self._keep_max(module, "input_scale",
                               absmax_scale(input[0], module.activation_qtype))
                if self.streamline and module not in self.streamline_hooks:
                    self.streamline_hooks[module] = module.register_forward_hook(self.tag_outputs)
                return input
            return super().calibrate_input(module, input, momentum)

        def calibrate_output(self, module, input, output):
            if isinstance(module, QModuleMixin) and module.activation_qtype is not None:
                self._keep_max(module, "output_scale",
                               absmax_scale(output, module.activation_qtype, axis=None))
                return output
            return super().calibrate_output(module, input, output)

    return MinMaxCalibration


def _calibration_mode(observer: str):
    from optimum.quanto import Calibration

    return _minmax_calibration() if observer == "minmax" else Calibration


def _observer(entry) -> str:
    """The entry's observer (recipe items share one); minmax where none is named."""
    named = [i["observer"] for i in entry.get("recipe") or [entry] if "observer" in i]
    return named[0] if named else OBSERVERS[0]


def _calibrate(model, calibration, observer):
    """Run greedy decoding on the calibration batches so that every layer sees real inputs."""
    import torch

    from ..decode import NB_MAX_FRAMES, generation_kwargs

    kwargs = generation_kwargs(model, {"max_new_tokens": CALIBRATION_MAX_TOKENS})
    # no_grad, not inference_mode: quanto's int4/int2 tensors fail under inference_mode
    with torch.no_grad(), _calibration_mode(observer)(momentum=0.9):
        for feats in calibration:
            feats = feats[..., :NB_MAX_FRAMES].float()
            model.generate(feats, **kwargs)


class Quanto(Quantizer):
    library = "quanto"
    package = "optimum-quanto"
    schemes = {
        "int8": {"weights": "int8", "activations": "none"},
        "int4": {"weights": "int4", "activations": "none"},
        "int2": {"weights": "int2", "activations": "none"},
        "float8": {"weights": "float8", "activations": "none"},
        "int8-a8-static": {"weights": "int8", "activations": "int8"},
        "float8-afp8-static": {"weights": "float8", "activations": "float8"},
    }
    options = {"weights": tuple(WEIGHT_TYPES), "activations": tuple(ACT_TYPES),
               "observer": OBSERVERS}
    supports_parts = True
    supports_recipe = True
    recipe_shared = ("observer",)  # one calibration pass for the whole model

    def validate(self, name, entry):
        out = super().validate(name, entry)
        if "recipe" in out:
            return out
        if out["activations"] == "none":
            if "observer" in out:
                raise PipelineError(f"entry {name!r}: 'observer' is for static activations; "
                                    f"scheme {out['scheme']!r} has none")
            return out
        if out["weights"] not in ("int8", "float8"):
            raise PipelineError(
                f"entry {name!r}: quanto static {out['activations']} activations need 8-bit "
                f"weights (int8 or float8), not {out['weights']}"
            )
        out.setdefault("observer", OBSERVERS[0])
        return out

    def needs_calibration(self, entry):
        return any(item["activations"] != "none" for item in entry.get("recipe") or [entry])

    def describe(self, entry):
        from ..parts import covered

        if "recipe" in entry:
            return self.describe_recipe(entry)
        w, a = entry["weights"], entry["activations"]
        eight = w in ("int8", "float8")
        static = a != "none"
        unquantized = float_parts(entry)
        if static and FLOAT_ACT_LAYER in covered(entry.get("parts")):
            unquantized.append("proj_out activations (its weights are quantized)")
        return facts(
            weights=WEIGHT_TYPES[w][1],
            activations=ACT_TYPES[a][1],
            act_mode=f"static ({_observer(entry)})" if static else "none",
            symmetric=True if eight else False,
            granularity="per-channel" if eight else "per-group",
            group_size=None if eight else GROUP_SIZE,
            unquantized=unquantized,
            parts=entry.get("parts"),
        )

    def quantize(self, model, entry, calibration=None):
        from optimum.quanto import freeze

        model = model.float().cpu().eval()
        if self.needs_calibration(entry) and not calibration:
            raise PipelineError("quanto static activations need calibration batches")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.quantize_layers(model, entry)
            # frozen first (quanto's examples calibrate, then freeze): an unfrozen layer
            # quantizes its weight again on every forward; the calibrated model comes out the
            # same (tests/unit/test_quant_quanto.py, benchmarks/calibration.py)
            freeze(model)
            if self.needs_calibration(entry):
                _calibrate(model, calibration, _observer(entry))
        return Quantized(model)

    def quantize_layers(self, model, entry) -> None:
        """Turn the entry's layers into quanto's, in place: neither frozen nor calibrated."""
        from optimum.quanto import quantize

        for item, names in self.layers(model, entry):
            weights = _qtype(WEIGHT_TYPES[item["weights"]][0])
            acts = _qtype(ACT_TYPES[item["activations"]][0])
            if acts and not item.get("parts"):
                # the whole model, as quanto does it: layer norms get static outputs too
                quantize(model, weights=weights, activations=acts, exclude=FLOAT_ACT_LAYER)
                quantize(model, weights=weights, include=FLOAT_ACT_LAYER)
                continue
            act_names = [n for n in names if n != FLOAT_ACT_LAYER] if acts else []
            if act_names:  # parts: their nn.Linear layers only
                quantize(model, weights=weights, activations=acts, include=act_names)
            rest = [n for n in names if n not in act_names]
            if rest:
                quantize(model, weights=weights, include=rest)

    def save(self, model, entry, out_dir):
        from optimum.quanto import quantization_map
        from safetensors.torch import save_file

        from ..modeling import drop_tied_head

        # a quantized proj_out has its own weight; a float one (outside the parts) is the
        # tied embedding, stored once
        state = {k: v.contiguous() for k, v in drop_tied_head(model.state_dict()).items()}
        save_file(state, str(out_dir / WEIGHTS))
        (out_dir / QMAP).write_text(json.dumps(quantization_map(model), indent=1, sort_keys=True))
        (out_dir / FLOAT_OUTPUTS).write_text(json.dumps(_float_outputs(model), indent=1))

    def load(self, ckpt_dir, model_dir, entry, device):
        import torch
        from optimum.quanto import requantize
        from safetensors.torch import load_file
        from transformers import GenerationConfig

        from ..modeling import empty_model, tie_head

        model = empty_model(model_dir)
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
        qmap = json.loads((ckpt_dir / QMAP).read_text())
        state = load_file(str(ckpt_dir / WEIGHTS))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            requantize(model, state, qmap, device=torch.device(device))
        tie_head(model, state)
        for name in json.loads((ckpt_dir / FLOAT_OUTPUTS).read_text()):
            model.get_submodule(name).disable_output_quantization()
        return model.eval()


def _float_outputs(model) -> list[str]:
    """Activation-quantized layers whose outputs calibration left float.

    quanto's ``Calibration`` (streamline mode) turns off output quantization of layers whose
    outputs only feed ops without quantized kernels (GELU, residual adds); that choice is in
    neither the state dict nor the quantization map, so it is saved beside them.
    """
    from optimum.quanto.nn import QModuleMixin

    def output_hooked(m):  # disable_output_quantization() removes the hook, keeps its handle
        handle = m._quantize_hooks.get("output")
        return handle is not None and handle.id in m._forward_hooks

    return [n for n, m in model.named_modules() if isinstance(m, QModuleMixin)
            and m.activation_qtype is not None and not output_hooked(m)]


QUANTIZER = Quanto()
