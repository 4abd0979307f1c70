"""The shared interface of all quantization libraries.

An entry of ``config.yaml`` (``entries: {name: {library: ..., scheme: ..., ...}}``) is
handled by the Quantizer of its library:

* ``validate(name, entry)`` → the entry with defaults filled in; PipelineError otherwise.
* ``unsupported(entry, device)`` → None, or why this library cannot run it on the device.
* ``describe(entry)`` → the scheme facts that go into every result row.
* ``quantize(model, entry, calibration)`` → ``Quantized(model, notes)``: the quantized model
  (in memory, on CPU) and its notes, the per-layer deviations from the scheme the library had
  to make (recorded in ``quant.json``).
* ``save(model, entry, out_dir)`` / ``load(ckpt_dir, model_dir, entry, device)``.
* ``linear_bytes(model, names)`` → bytes of the quantized nn.Linear layers (a runtime whose
  ``quantize`` returns no torch module, CTranslate2, counts its own).

``load`` may return a non-transformers model (a runtime): it then has a
``transcriber(tokenizer, device, decoding)`` method giving what ``decode.Transcriber``
gives, and a ``runtime_info`` dict recorded with the timings.

Two entry forms restrict or mix schemes (libraries opt in with ``supports_parts`` /
``supports_recipe``):

* ``parts: [encoder.ffn, ...]`` — the scheme on those parts only (whisper_ptq.parts); the
  other nn.Linear layers stay float.
* ``recipe: [{scheme: int4, parts: [ffn]}, {scheme: int8, parts: [attn, proj_out]}]`` — a
  mixed-precision model: each item is an entry of the same library on its own parts (no
  layer in two items); ``layers(model, entry)`` gives each item with its module names.

The checkpoint directory holds the library's weight files plus ``quant.json`` (written by
``checkpoint.save_checkpoint``). Loading never unpickles arbitrary objects: safetensors, or
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from .. import PipelineError
from ..parts import all_linear

linear_names = all_linear  # names of every nn.Linear of a model

DEVICES = ("cpu", "cuda")
# What every library here leaves in floating point: only nn.Linear layers are quantized.
FLOAT_PARTS = ["conv front-end", "embed_tokens", "embed_positions", "layer norms"]
OUTSIDE = "nn.Linear outside "  # what float_parts() adds for an entry restricted to parts


class Quantized(NamedTuple):
    """What ``Quantizer.quantize`` returns."""

    model: Any
    # per-layer deviations from the scheme the library had to make (e.g. hqq packing)
    notes: tuple[str, ...] = ()


class Quantizer:
    library: ClassVar[str]
    # the distribution whose version is this library's (recorded in provenance)
    package: ClassVar[str]
    # scheme name -> default options of that scheme
    schemes: ClassVar[dict[str, dict[str, Any]]]
    # option name -> allowed values (a tuple) or a type
    options: ClassVar[dict[str, Any]] = {}
    devices: ClassVar[tuple[str, ...]] = DEVICES
    # whether quantize/load honour an entry's `parts:` (whisper_ptq.parts; see targets())
    supports_parts: ClassVar[bool] = False
    # whether it can combine schemes in one model (``recipe:``; see layers())
    supports_recipe: ClassVar[bool] = False
    # options the library applies model-wide: a recipe's items that set one must agree
    recipe_shared: ClassVar[tuple[str, ...]] = ()
    # whether an option applies only to the schemes whose defaults name it (else to every one)
    scheme_options: ClassVar[bool] = False
    # whether its transcriber can decode with the temperature fallback (decoding.fallback)
    supports_fallback: ClassVar[bool] = True

    # -- config ---------------------------------------------------------------------------
    def validate(self, name: str, entry: dict) -> dict:
        if "recipe" in entry:
            return self._validate_recipe(name, entry)
        scheme = entry.get("scheme")
        if scheme not in self.schemes:
            raise PipelineError(
                f"entry {name!r}: unknown scheme {scheme!r} for library {self.library!r}; "
                f"known: {', '.join(self.schemes)}"
            )
        out = {"library": self.library, "scheme": scheme, **self.schemes[scheme]}
        for key, value in entry.items():
            if key in ("library", "scheme", "devices", "parts"):
                continue
            if key not in self.options:
                raise PipelineError(
                    f"entry {name!r}: option {key!r} is not known to library {self.library!r}; "
                    f"known: {', '.join(sorted(self.options)) or 'none'}"
                )
            if self.scheme_options and key not in self.schemes[scheme]:
                raise PipelineError(f"entry {name!r}: option {key!r} does not apply to "
                                    f"scheme {scheme!r} of library {self.library!r}")
            allowed = self.options[key]
            ok = value in allowed if isinstance(allowed, tuple) else isinstance(value, allowed)
            if not ok:
                raise PipelineError(
                    f"entry {name!r}: option {key}={value!r} is invalid; allowed: {allowed}"
                )
            out[key] = value
        if "parts" in entry:
            from ..parts import validate_parts

            if not self.supports_parts:
                raise PipelineError(f"entry {name!r}: library {self.library!r} cannot restrict "
                                    "quantization to model parts ('parts') yet")
            try:
                out["parts"] = validate_parts(entry["parts"])
            except PipelineError as e:
                raise PipelineError(f"entry {name!r}: {e}") from None
        return self._validate_devices(name, entry, out)

    def _validate_devices(self, name: str, entry: dict, out: dict) -> dict:
        devices = entry.get("devices")
        if devices is not None:
            out["devices"] = list(devices)
            for device in out["devices"]:
                reason = self.unsupported(out, device)
                if reason:
                    raise PipelineError(f"entry {name!r} cannot run on {device}: {reason}")
        return out

    def _validate_recipe(self, name: str, entry: dict) -> dict:
        from ..parts import overlap

        if not self.supports_recipe:
            raise PipelineError(f"entry {name!r}: library {self.library!r} cannot combine "
                                "schemes in one model ('recipe')")
        extra = sorted(set(entry) - {"library", "recipe", "devices"})
        if extra:
            raise PipelineError(f"entry {name!r}: a recipe entry gives scheme and options per "
                                f"item, not {', '.join(map(repr, extra))} beside 'recipe'")
        recipe = entry["recipe"]
        if not isinstance(recipe, list) or len(recipe) < 2:
            raise PipelineError(f"entry {name!r}: 'recipe' must list at least two items "
                                "({scheme, parts, options}); one scheme is a plain entry")
        items = []
        for i, raw in enumerate(recipe):
            where = f"{name}.recipe[{i}]"
            if not isinstance(raw, dict) or "parts" not in raw or not raw.get("scheme"):
                raise PipelineError(f"entry {where!r}: each recipe item needs 'scheme' and 'parts'")
            if raw.keys() & {"recipe", "devices"} or raw.get("library", self.library) != self.library:
                raise PipelineError(f"entry {where!r}: an item takes scheme, parts and options only")
            items.append(self.validate(where, {**raw, "library": self.library}))
        for i, a in enumerate(items):
            for j in range(i):
                shared = overlap(items[j]["parts"], a["parts"])
                if shared:
                    raise PipelineError(
                        f"entry {name!r}: recipe items {j} and {i} both cover {shared[0]} "
                        f"({'+'.join(items[j]['parts'])} / {'+'.join(a['parts'])}); each layer "
                        "gets one scheme")
        for key in self.recipe_shared:
            values = {item[key] for item in items if key in item}
            if len(values) > 1:
                raise PipelineError(f"entry {name!r}: recipe items must share {key!r}, "
                                    f"not {sorted(values)}")
        out = {"library": self.library, "scheme": "recipe", "recipe": items,
               "parts": [p for item in items for p in item["parts"]]}
        return self._validate_devices(name, entry, out)

    def unsupported(self, entry: dict, device: str) -> str | None:
        if device not in self.devices:
            return f"library {self.library!r} has no {device} support"
        for item in entry.get("recipe", []):
            reason = self.unsupported(item, device)
            if reason:
                return reason
        return None

    def describe(self, entry: dict) -> dict:
        raise NotImplementedError

    # -- model ----------------------------------------------------------------------------
    def quantize(self, model, entry: dict, calibration=None) -> Quantized:
        raise NotImplementedError

    def save(self, model, entry: dict, out_dir) -> None:
        raise NotImplementedError

    def load(self, ckpt_dir, model_dir, entry: dict, device: str):
        raise NotImplementedError

    def linear_bytes(self, model, names: list[str]) -> int:
        """Bytes of the quantized model's originally-nn.Linear layers (README: size)."""
        return linear_bytes(model, names)

    def needs_calibration(self, entry: dict) -> bool:
        return False

    def targets(self, model, entry: dict) -> list[str]:
        """Names of the nn.Linear modules this entry quantizes (all, or its ``parts``)."""
        from ..parts import linear_names as part_linear_names

        return part_linear_names(model, entry.get("parts"))

    def layers(self, model, entry: dict) -> list[tuple[dict, list[str]]]:
        """(scheme entry, nn.Linear names) pairs: the entry itself, or each recipe item."""
        return [(item, self.targets(model, item)) for item in entry.get("recipe") or [entry]]

    def describe_recipe(self, entry: dict) -> dict:
        """Facts of a recipe: a fact shared by all items as is, else each item's value
        with its parts ("int4 [ffn] + int8 [attn+proj_out]")."""
        per_item = [(self.describe(item), "+".join(item["parts"])) for item in entry["recipe"]]
        out = {}
        for key in per_item[0][0]:
            values = [f[key] for f, _ in per_item]
            out[key] = values[0] if all(v == values[0] for v in values) else " + ".join(
                f"{v} [{parts}]" for v, (_, parts) in zip(values, per_item))
        out["parts"] = "; ".join(entry["parts"])
        extra = [u for f, _ in per_item for u in f["unquantized"]
                 if u not in FLOAT_PARTS and not u.startswith(OUTSIDE)]
        out["unquantized"] = float_parts(entry) + list(dict.fromkeys(extra))
        return out


def facts(
    *,
    weights: str,
    activations: str = "float32",
    act_mode: str = "none",
    symmetric: bool | None = None,
    granularity: str,
    group_size: int | None = None,
    unquantized: list[str] | None = None,
    parts: list[str] | None = None,
) -> dict:
    """The scheme facts recorded with every result (one dict shape for every library)."""
    return {
        "weights": weights,
        "activations": activations,
        "act_mode": act_mode,
        "symmetric": symmetric,
        "granularity": granularity,
        "group_size": group_size,
        "unquantized": unquantized if unquantized is not None else list(FLOAT_PARTS),
        "parts": "; ".join(parts) if parts else "all",
    }


def float_parts(entry: dict) -> list[str]:
    """FLOAT_PARTS, plus the nn.Linear layers outside an entry's ``parts``."""
    parts = entry.get("parts")
    return list(FLOAT_PARTS) + ([f"{OUTSIDE}{'+'.join(parts)}"] if parts else [])


def tensor_bytes(obj) -> int:
    """Bytes held by the tensors in a (nested) state-dict value."""
    import torch

    if isinstance(obj, torch.Tensor):
        n = obj.numel() * obj.element_size()
        if obj.is_quantized:  # torch.ao tensors: int8 data + float64 scale, int64 zero point
            per_channel = obj.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
            n += 16 * (obj.q_per_channel_scales().numel() if per_channel else 1)
        return n
    if isinstance(obj, (tuple, list)):
        return sum(tensor_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(o) for o in obj.values())
    return 0


def linear_bytes(model, names: list[str]) -> int:
    """Bytes of the given (originally nn.Linear) submodules' state, tied weights included."""
    total = 0
    for name in names:
        module = model.get_submodule(name)
        total += tensor_bytes(module.state_dict())
    return total
