"""Parts of a Whisper model, by name, for sensitivity sweeps and restricted entries.

An entry may restrict its scheme to parts of the model with ``parts: [encoder.ffn, ...]``.
A part name is ``[<stack>.]<kind>`` or a whole stack:

=====================  ==========================================================
``encoder``            every nn.Linear of the encoder
``decoder``            every nn.Linear of the decoder layers (not ``proj_out``)
``proj_out``           the output projection (tied to the token embedding)
``self_attn``          q/k/v/out projections of self-attention (``encoder.`` or
                       ``decoder.`` prefix: one stack only)
``cross_attn``         q/k/v/out projections of the decoder's cross-attention
                       (``encoder_attn`` in Hugging Face names); ``decoder.cross_attn``
``attn``               self- and cross-attention
``ffn``                the feed-forward ``fc1``/``fc2``
``all``                every nn.Linear (the default when ``parts`` is absent)
=====================  ==========================================================

``linear_names(model, parts)`` returns exactly the module names of the nn.Linear layers the
parts cover; a part that names nothing in the model is a PipelineError. ``overlap(a, b)``
tells, without a model, which kinds of layer two lists of parts share (a mixed-precision
recipe must give each layer one scheme).
"""

from __future__ import annotations

import re

from . import PipelineError

STACKS = ("encoder", "decoder")
KINDS = {
    "self_attn": r"layers\.\d+\.self_attn\.(q|k|v|out)_proj",
    "cross_attn": r"layers\.\d+\.encoder_attn\.(q|k|v|out)_proj",
    "attn": r"layers\.\d+\.(self_attn|encoder_attn)\.(q|k|v|out)_proj",
    "ffn": r"layers\.\d+\.fc[12]",
}
WHOLE = {"encoder": r"model\.encoder\..+", "decoder": r"model\.decoder\..+",
         "proj_out": r"proj_out", "all": r".+"}


# one layer of each kind, named as in Hugging Face Whisper: what parts can be told apart by
CANONICAL = [f"model.{stack}.layers.0.{block}" for stack, blocks in (
    ("encoder", ("self_attn", "fc")), ("decoder", ("self_attn", "encoder_attn", "fc")))
    for kind in blocks
    for block in ((f"{kind}.{p}_proj" for p in ("q", "k", "v", "out")) if kind != "fc"
                  else ("fc1", "fc2"))] + ["proj_out"]


def part_names() -> list[str]:
    names = list(WHOLE) + list(KINDS)
    names += [f"{s}.{k}" for s in STACKS for k in KINDS
              if not (s == "encoder" and k == "cross_attn")]
    return names


def part_regex(part: str) -> re.Pattern:
    if part in WHOLE:
        return re.compile(rf"^{WHOLE[part]}$")
    stack, _, kind = part.rpartition(".")
    if kind in KINDS and (stack in STACKS or stack == "") and part in part_names():
        stacks = stack or "(encoder|decoder)"
        return re.compile(rf"^model\.{stacks}\.{KINDS[kind]}$")
    raise PipelineError(f"unknown model part {part!r}; known: {', '.join(part_names())}")


def validate_parts(parts) -> list[str]:
    """A list of known, distinct part names (PipelineError otherwise)."""
    if isinstance(parts, str):
        parts = [parts]
    if not isinstance(parts, (list, tuple)) or not parts:
        raise PipelineError(f"'parts' must be a non-empty list of part names, got {parts!r}")
    for p in parts:
        if not isinstance(p, str):
            raise PipelineError(f"'parts': {p!r} is not a part name")
        part_regex(p)
    if len(set(parts)) != len(parts):
        raise PipelineError(f"'parts' lists a part twice: {parts}")
    return list(parts)


def all_linear(model) -> list[str]:
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def linear_names(model, parts=None) -> list[str]:
    """Names of the nn.Linear modules of ``model`` covered by ``parts`` (all of them if None)."""
    names = all_linear(model)
    if parts is None:
        return names
    chosen = set()
    for p in validate_parts(parts):
        rx = part_regex(p)
        hit = {n for n in names if rx.match(n)}
        if not hit:
            raise PipelineError(f"model part {p!r} matches no nn.Linear layer of this model")
        chosen |= hit
    return [n for n in names if n in chosen]


def left_out(model, parts=None) -> list[str]:
    """nn.Linear modules the parts leave in floating point."""
    chosen = set(linear_names(model, parts))
    return [n for n in all_linear(model) if n not in chosen]


def covered(parts) -> set[str]:
    """The CANONICAL layer names that ``parts`` (None = all) cover."""
    rxs = [part_regex(p) for p in (parts or ["all"])]
    return {n for n in CANONICAL if any(rx.match(n) for rx in rxs)}


def overlap(a, b) -> list[str]:
    """Kinds of layer (CANONICAL names) covered by both lists of parts."""
    both = covered(a) & covered(b)
    return [n for n in CANONICAL if n in both]
