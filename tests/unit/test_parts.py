"""Part selection: exactly the intended nn.Linear modules of a Whisper model."""

from __future__ import annotations

import pytest

from whisper_ptq import PipelineError
from whisper_ptq.parts import all_linear, left_out, linear_names, part_names, validate_parts

N_LAYERS = 2


@pytest.fixture(scope="module")
def model():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(vocab_size=100, d_model=16, encoder_layers=N_LAYERS,
                        decoder_layers=N_LAYERS, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        num_mel_bins=80, max_source_positions=50, max_target_positions=20,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2,
                        decoder_start_token_id=3)
    return WhisperForConditionalGeneration(cfg)


def expected(stack, block, projs, layers=range(N_LAYERS)):
    return {f"model.{stack}.layers.{i}.{block}{p}" for i in layers for p in projs}


QKVO = (".q_proj", ".k_proj", ".v_proj", ".out_proj")


def test_the_model_has_the_linear_layers_we_think(model):
    names = set(all_linear(model))
    assert len(names) == N_LAYERS * (4 + 2) + N_LAYERS * (4 + 4 + 2) + 1
    assert "proj_out" in names


@pytest.mark.parametrize("parts, want", [
    (["encoder.self_attn"], expected("encoder", "self_attn", QKVO)),
    (["encoder.ffn"], expected("encoder", "", ("fc1", "fc2"))),
    (["decoder.self_attn"], expected("decoder", "self_attn", QKVO)),
    (["decoder.cross_attn"], expected("decoder", "encoder_attn", QKVO)),
    (["cross_attn"], expected("decoder", "encoder_attn", QKVO)),
    (["decoder.ffn"], expected("decoder", "", ("fc1", "fc2"))),
    (["ffn"], expected("encoder", "", ("fc1", "fc2")) | expected("decoder", "", ("fc1", "fc2"))),
    (["self_attn"], expected("encoder", "self_attn", QKVO) | expected("decoder", "self_attn", QKVO)),
    (["attn"], expected("encoder", "self_attn", QKVO) | expected("decoder", "self_attn", QKVO)
     | expected("decoder", "encoder_attn", QKVO)),
    (["encoder"], expected("encoder", "self_attn", QKVO) | expected("encoder", "", ("fc1", "fc2"))),
    (["decoder"], expected("decoder", "self_attn", QKVO) | expected("decoder", "encoder_attn", QKVO)
     | expected("decoder", "", ("fc1", "fc2"))),
    (["proj_out"], {"proj_out"}),
    (["encoder.ffn", "decoder.cross_attn"], expected("encoder", "", ("fc1", "fc2"))
     | expected("decoder", "encoder_attn", QKVO)),
])
def test_parts_select_exactly_the_intended_modules(model, parts, want):
    got = linear_names(model, parts)
    assert set(got) == want
    assert len(got) == len(want)  # no duplicates
    assert set(left_out(model, parts)) == set(all_linear(model)) - want


def test_no_parts_means_every_linear(model):
    assert linear_names(model) == all_linear(model) == linear_names(model, ["all"])
    assert left_out(model) == []


def test_parts_cover_the_model_without_overlap(model):
    pieces = ["encoder.self_attn", "encoder.ffn", "decoder.self_attn", "decoder.cross_attn",
              "decoder.ffn", "proj_out"]
    sets = [set(linear_names(model, [p])) for p in pieces]
    assert sum(len(s) for s in sets) == len(set().union(*sets)) == len(all_linear(model))


@pytest.mark.parametrize("bad, msg", [
    (["encoder.cross_attn"], "unknown model part"),
    (["mlp"], "unknown model part"),
    ([], "non-empty"),
    (["ffn", "ffn"], "twice"),
    ([3], "not a part name"),
])
def test_bad_parts_are_clear_errors(bad, msg):
    with pytest.raises(PipelineError, match=msg):
        validate_parts(bad)


def test_a_part_matching_nothing_is_an_error():
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj_out = nn.Linear(2, 2)

    with pytest.raises(PipelineError, match="matches no nn.Linear"):
        linear_names(Tiny(), ["encoder.ffn"])
    assert linear_names(Tiny(), ["proj_out"]) == ["proj_out"]


def test_every_listed_part_name_is_documented_and_selects_layers(model):
    # the names the module docstring's table documents (a stack prefix: that stack only)
    assert sorted(part_names()) == sorted([
        "all", "encoder", "decoder", "proj_out", "self_attn", "cross_attn", "attn", "ffn",
        "encoder.self_attn", "encoder.attn", "encoder.ffn",
        "decoder.self_attn", "decoder.cross_attn", "decoder.attn", "decoder.ffn"])
    for p in part_names():
        assert validate_parts([p]) == [p]
        assert linear_names(model, [p])  # none is dead on a real Whisper module tree


def test_torch_entry_with_parts_quantizes_exactly_those_modules(model):
    import copy

    import torch

    from whisper_ptq import quantizers

    q = quantizers.get("torch")
    entry = q.validate("t", {"library": "torch", "scheme": "int8-dynamic",
                             "parts": ["encoder.ffn", "decoder.cross_attn"]})
    assert entry["parts"] == ["encoder.ffn", "decoder.cross_attn"]
    qm = q.quantize(copy.deepcopy(model), entry).model
    dyn = torch.ao.nn.quantized.dynamic.Linear
    quantized = {n for n, m in qm.named_modules() if isinstance(m, dyn)}
    assert quantized == set(linear_names(model, entry["parts"]))
    still_float = {n for n, m in qm.named_modules() if type(m) is torch.nn.Linear}
    assert still_float == set(left_out(model, entry["parts"]))
    facts = q.describe(entry)
    assert facts["parts"] == "encoder.ffn; decoder.cross_attn"
    assert "nn.Linear outside encoder.ffn+decoder.cross_attn" in facts["unquantized"]
    # without parts: every nn.Linear, and facts say so
    full = q.quantize(copy.deepcopy(model), q.validate("t", {"library": "torch",
                                                           "scheme": "int8-dynamic"})).model
    assert {n for n, m in full.named_modules() if isinstance(m, dyn)} == set(all_linear(model))
    assert q.describe(q.validate("t", {"library": "torch", "scheme": "int8-dynamic"}))["parts"] == "all"


def test_entry_parts_are_validated_with_the_entry_name():
    from whisper_ptq import quantizers

    with pytest.raises(PipelineError, match="entry 'x': unknown model part 'encoder.cross_attn'"):
        quantizers.get("torch").validate("x", {"library": "torch", "scheme": "int8-dynamic",
                                               "parts": ["encoder.cross_attn"]})
    with pytest.raises(PipelineError, match="entry 'f'.*cannot restrict"):
        quantizers.get("fp").validate("f", {"library": "fp", "scheme": "fp32", "parts": ["ffn"]})


@pytest.fixture
def fake_model_dir(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    return tmp_path


def test_sweep_expands_into_one_entry_per_part(fake_model_dir):
    from whisper_ptq.config import SWEEP_PARTS, Study, validate_schema

    base = {"model": str(fake_model_dir), "devices": "cpu", "entries": {
        "fp32": {"library": "fp", "scheme": "fp32"},
        "int8": {"library": "torch", "scheme": "int8-dynamic", "granularity": "per-channel"}}}
    s = Study(validate_schema({**base, "sweep": {"entry": "int8", "parts": ["encoder.ffn", "decoder"]}}))
    assert s.sweep == {"entry": "int8", "parts": {"encoder.ffn": "int8+encoder.ffn",
                                                   "decoder": "int8+decoder"}}
    assert s.entries["int8+encoder.ffn"]["parts"] == ["encoder.ffn"]
    assert s.entries["int8+encoder.ffn"]["granularity"] == "per-channel"  # the entry's options
    assert s.selected == ["fp32", "int8", "int8+encoder.ffn", "int8+decoder"]
    only = Study(validate_schema({**base, "only": "int8", "sweep": {"entry": "int8",
                                                                      "parts": ["decoder"]}}))
    assert only.selected == ["int8", "int8+decoder"]
    default = Study(validate_schema({**base, "sweep": {"entry": "int8"}}))
    assert len(default.sweep["parts"]) == 8
    # bitsandbytes cannot quantize proj_out: the default sweep leaves it out, an explicit one fails
    bnb = {**base, "entries": {**base["entries"], "nf4": {"library": "bnb", "scheme": "nf4"}}}
    assert list(Study(validate_schema({**bnb, "sweep": {"entry": "nf4"}})).sweep["parts"]) == [
        p for p in SWEEP_PARTS if p != "proj_out"]
    with pytest.raises(PipelineError, match="part 'proj_out' cannot be quantized"):
        Study(validate_schema({**bnb, "sweep": {"entry": "nf4", "parts": ["proj_out"]}}))
    assert Study(validate_schema(dict(base))).sweep is None


@pytest.mark.parametrize("sweep, msg", [
    ({"entry": "nope"}, "unknown entry 'nope'"),
    ({"entry": "fp32", "parts": ["ffn"]}, "cannot restrict"),
    ({"entry": "int8", "parts": ["encoder.cross_attn"]}, "unknown model part"),
])
def test_bad_sweeps_are_clear_errors(fake_model_dir, sweep, msg):
    from whisper_ptq.config import Study, validate_schema

    base = {"model": str(fake_model_dir), "devices": "cpu", "entries": {
        "fp32": {"library": "fp", "scheme": "fp32"},
        "int8": {"library": "torch", "scheme": "int8-dynamic"}}}
    with pytest.raises(PipelineError, match=msg):
        Study(validate_schema({**base, "sweep": sweep}))
