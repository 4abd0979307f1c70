"""Parts and mixed-precision recipes in quanto, HQQ and bitsandbytes (tiny random model):
exactly the intended nn.Linear layers are quantized, each with its item's scheme, and the
checkpoint reloads to the same outputs."""

from __future__ import annotations

import pytest
import torch
from quant_roundtrip import assert_same_outputs, roundtrip

from whisper_ptq import PipelineError
from whisper_ptq.parts import all_linear, linear_names, overlap
from whisper_ptq.quantizers import get

PARTS = ["encoder.ffn", "decoder.cross_attn"]


def quantized_names(model, cls_names):
    return {n for n, m in model.named_modules() if type(m).__name__ in cls_names}


@pytest.fixture(scope="module")
def fp32_names(random_model_dir):
    from whisper_ptq.modeling import load_fp32

    model = load_fp32(random_model_dir)
    return {"all": set(all_linear(model)), "parts": set(linear_names(model, PARTS)),
            "ffn": set(linear_names(model, ["ffn"])),
            "attn": set(linear_names(model, ["attn", "proj_out"]))}


@pytest.mark.parametrize("library, raw, cls", [
    ("quanto", {"scheme": "int8"}, "QLinear"),
    ("quanto", {"scheme": "int4"}, "QLinear"),
    ("hqq", {"scheme": "int4"}, "HQQLinear"),
    ("bnb", {"scheme": "nf4"}, "Linear4bit"),
    ("bnb", {"scheme": "int8"}, "Linear8bitLt"),
])
def test_parts_quantize_exactly_those_layers_and_reload(random_model_dir, tmp_path, fp32_names,
                                                        library, raw, cls):
    entry, model, reloaded = roundtrip(library, {**raw, "parts": PARTS}, random_model_dir, tmp_path)
    for m in (model, reloaded):
        assert quantized_names(m, {cls}) == fp32_names["parts"]
        inside = tuple(n + "." for n in fp32_names["parts"])  # hqq keeps the original inside
        plain = {n for n, mod in m.named_modules()
                 if type(mod) is torch.nn.Linear and not n.startswith(inside)}
        assert plain == fp32_names["all"] - fp32_names["parts"]
    assert_same_outputs(model, reloaded)
    facts = get(library).describe(entry)
    assert facts["parts"] == "encoder.ffn; decoder.cross_attn"
    assert "nn.Linear outside encoder.ffn+decoder.cross_attn" in facts["unquantized"]


def test_quanto_static_parts_calibrate_only_their_layers(random_model_dir, tmp_path, fp32_names):
    calibration = [torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(1))]
    entry, model, reloaded = roundtrip(
        "quanto", {"scheme": "int8-a8-static", "parts": ["decoder.ffn"]}, random_model_dir,
        tmp_path, calibration)
    want = {n for n in fp32_names["all"] if n.startswith("model.decoder.") and ".fc" in n}
    static = {n for n, m in model.named_modules()
              if type(m).__name__ == "QLinear" and m.activation_qtype is not None}
    assert static == want and quantized_names(model, {"QLinear"}) == want
    for n in want:  # calibrated: the input scale moved from quanto's initial 1
        assert float(model.get_submodule(n).input_scale) != 1.0
    assert_same_outputs(model, reloaded)
    # proj_out outside the parts: no note about its activations
    assert not any("proj_out activations" in u for u in get("quanto").describe(entry)["unquantized"])


RECIPES = {
    "hqq": {"recipe": [{"scheme": "int4", "parts": ["ffn"]},
                       {"scheme": "int8", "parts": ["attn", "proj_out"]}]},
    "quanto": {"recipe": [{"scheme": "int4", "parts": ["ffn"]},
                          {"scheme": "int8", "parts": ["attn", "proj_out"]}]},
}


def test_hqq_recipe_gives_each_part_its_bits(random_model_dir, tmp_path, fp32_names):
    entry, model, reloaded = roundtrip("hqq", RECIPES["hqq"], random_model_dir, tmp_path)
    for m in (model, reloaded):
        bits = {n: m.get_submodule(n).meta["nbits"] for n in quantized_names(m, {"HQQLinear"})}
        assert {n for n, b in bits.items() if b == 4} == fp32_names["ffn"]
        assert {n for n, b in bits.items() if b == 8} == fp32_names["attn"]
        assert set(bits) == fp32_names["all"]
    assert_same_outputs(model, reloaded)
    facts = get("hqq").describe(entry)
    assert facts["weights"] == "int4 [ffn] + int8 [attn+proj_out]"
    assert facts["granularity"] == "per-group" and facts["group_size"] == 64  # shared: as is
    assert facts["parts"] == "ffn; attn; proj_out"


def test_quanto_recipe_gives_each_part_its_weight_type(random_model_dir, tmp_path, fp32_names):
    entry, model, reloaded = roundtrip("quanto", RECIPES["quanto"], random_model_dir, tmp_path)
    for m in (model, reloaded):
        wtype = {n: m.get_submodule(n).weight_qtype.name for n in quantized_names(m, {"QLinear"})}
        assert {n for n, t in wtype.items() if t == "qint4"} == fp32_names["ffn"]
        assert {n for n, t in wtype.items() if t == "qint8"} == fp32_names["attn"]
    assert_same_outputs(model, reloaded)
    assert get("quanto").describe(entry)["weights"] == "int4 [ffn] + int8 [attn+proj_out]"


def test_mixed_recipe_is_smaller_than_8bit_and_larger_than_4bit(random_model_dir, tmp_path):
    from whisper_ptq.checkpoint import save_checkpoint

    q = get("hqq")
    sizes = {}
    for name, raw in {"int8": {"scheme": "int8"}, "int4": {"scheme": "int4"},
                      "mix": RECIPES["hqq"]}.items():
        entry = q.validate(name, {"library": "hqq", **raw})
        sizes[name] = save_checkpoint(name, entry, random_model_dir, tmp_path / name).linear_bytes
    assert sizes["int4"] < sizes["mix"] < sizes["int8"]


@pytest.mark.parametrize("library, raw, msg", [
    ("hqq", {"recipe": [{"scheme": "int4", "parts": ["ffn"]},
                        {"scheme": "int8", "parts": ["encoder"]}]},
     r"items 0 and 1 both cover model.encoder.layers.0.fc1"),
    ("hqq", {"recipe": [{"scheme": "int4", "parts": ["ffn"]}]}, "at least two items"),
    ("hqq", {"recipe": [{"scheme": "int4", "parts": ["ffn"]}, {"scheme": "int8"}]},
     r"'x.recipe\[1\]'.*needs 'scheme' and 'parts'"),
    ("hqq", {"recipe": [{"scheme": "int4", "parts": ["ffn"]},
                        {"scheme": "int9", "parts": ["attn"]}]}, r"'x.recipe\[1\]'.*unknown scheme 'int9'"),
    ("hqq", {"scheme": "int4", "recipe": [{"scheme": "int4", "parts": ["ffn"]},
                                          {"scheme": "int8", "parts": ["attn"]}]}, "beside 'recipe'"),
    ("hqq", {"recipe": [{"scheme": "int4", "parts": ["ffn"], "compute_dtype": "bfloat16"},
                        {"scheme": "int8", "parts": ["attn"]}]}, "share 'compute_dtype'"),
    ("quanto", {"recipe": [{"scheme": "int8-a8-static", "parts": ["ffn"], "observer": "minmax"},
                           {"scheme": "int8-a8-static", "parts": ["attn"],
                            "observer": "moving-average"}]}, "share 'observer'"),
    ("torch", {"recipe": [{"scheme": "int8-dynamic", "parts": ["ffn"]},
                          {"scheme": "int8-dynamic", "parts": ["attn"]}]}, "cannot combine schemes"),
    ("bnb", {"scheme": "nf4", "parts": ["ffn", "proj_out"]}, "part 'proj_out' cannot be quantized"),
    ("quanto", {"recipe": [{"scheme": "int4", "parts": ["ffn"], "activations": "int8"},
                           {"scheme": "int8", "parts": ["attn"]}]}, "need 8-bit weights"),
])
def test_bad_recipes_and_parts_are_clear_errors(library, raw, msg):
    with pytest.raises(PipelineError, match=msg):
        get(library).validate("x", {"library": library, **raw})


def test_overlap_is_by_kind_of_layer():
    assert overlap(["ffn"], ["attn", "proj_out"]) == []
    assert overlap(["decoder"], ["cross_attn"]) == [f"model.decoder.layers.0.encoder_attn.{p}_proj"
                                                    for p in "qkv"] + [
        "model.decoder.layers.0.encoder_attn.out_proj"]
    assert overlap(["all"], ["proj_out"]) == ["proj_out"]


def test_recipe_devices_follow_their_items():
    q = get("hqq")
    recipe = [{"scheme": "int4", "parts": ["ffn"], "compute_dtype": "float16"},
              {"scheme": "int8", "parts": ["attn"], "compute_dtype": "float16"}]
    entry = q.validate("m", {"library": "hqq", "recipe": recipe})
    assert "GPU setting" in q.unsupported(entry, "cpu") and q.unsupported(entry, "cuda") is None
    with pytest.raises(PipelineError, match="entry 'm' cannot run on cpu"):
        q.validate("m", {"library": "hqq", "devices": ["cpu"], "recipe": recipe})


def test_recipe_entries_pass_the_schema_and_the_study(tmp_path):
    from whisper_ptq.config import Study, validate_schema

    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    entries = {"fp32": {"library": "fp", "scheme": "fp32"},
               "mix": {"library": "hqq", **RECIPES["hqq"]},
               "ffn": {"library": "quanto", "scheme": "int4", "parts": ["ffn"]}}
    s = Study(validate_schema({"model": str(tmp_path), "devices": "cpu", "entries": entries}))
    assert s.entries["mix"]["scheme"] == "recipe" and s.entries["mix"]["parts"] == ["ffn", "attn", "proj_out"]
    assert [j.entry for j in s.jobs()].count("mix") == 2
    for bad in ({"library": "hqq"},  # neither scheme nor recipe
                {"library": "hqq", "recipe": [{"scheme": "int4"}, {"scheme": "int8", "parts": ["ffn"]}]},
                {"library": "hqq", "scheme": "int4", "parts": "ffn"}):
        with pytest.raises(PipelineError, match="config.yaml is invalid"):
            validate_schema({"model": str(tmp_path), "entries": {**entries, "bad": bad}})
