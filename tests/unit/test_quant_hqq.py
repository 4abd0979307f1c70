"""HQQ module: 8/4/3/2-bit per-group weights, safetensors checkpoint (tiny random model)."""

import json

import pytest
import torch
from quant_roundtrip import assert_same_outputs, fp32_logits, roundtrip

from whisper_ptq import PipelineError
from whisper_ptq.checkpoint import load_checkpoint, save_checkpoint
from whisper_ptq.config import Study
from whisper_ptq.quantizers import get
from whisper_ptq.quantizers.hqq import pack_axis


@pytest.mark.parametrize("scheme,group_size", [("int8", 64), ("int4", 64), ("int3", 64),
                                               ("int2", 64)])
def test_reloads_identically_without_pickle(random_model_dir, tmp_path, scheme, group_size):
    entry, model, reloaded = roundtrip("hqq", {"scheme": scheme, "group_size": group_size},
                                       random_model_dir, tmp_path)
    logits = assert_same_outputs(model, reloaded)
    assert not torch.equal(logits, fp32_logits(random_model_dir))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    layer = reloaded.model.decoder.layers[1].fc2
    assert type(layer).__name__ == "HQQLinear" and type(reloaded.proj_out).__name__ == "HQQLinear"
    assert layer.meta["nbits"] == entry["nbits"] and layer.meta["group_size"] == group_size


def test_meta_sizes_and_facts(random_model_dir, tmp_path):
    q = get("hqq")
    metas = {}
    for scheme in ("int8", "int4", "int2"):
        entry = q.validate(scheme, {"library": "hqq", "scheme": scheme})
        metas[scheme] = save_checkpoint(scheme, entry, random_model_dir, tmp_path / scheme)
    ratio = {s: m.linear_bytes / m.fp32_linear_bytes for s, m in metas.items()}
    # packed weights + a float32 scale and zero point per group of 64
    assert 0.25 < ratio["int8"] < 0.3
    assert 0.125 < ratio["int4"] < 0.17
    assert 0.0625 < ratio["int2"] < 0.11
    assert metas["int2"].bytes_on_disk < metas["int4"].bytes_on_disk < metas["int8"].bytes_on_disk
    f = metas["int4"].facts
    assert (f["library"], f["weights"], f["symmetric"], f["granularity"], f["group_size"]) == \
        ("hqq", "int4", False, "per-group", 64)
    assert metas["int4"].notes == []
    model, _ = load_checkpoint(tmp_path / "int4", random_model_dir, "cpu")
    # proj_out is a separate quantized copy; the tied embedding stays float32
    assert type(model.proj_out).__name__ == "HQQLinear"
    assert model.model.decoder.embed_tokens.weight.dtype == torch.float32


def test_layers_that_cannot_be_packed_fall_back_to_axis0(random_model_dir, tmp_path):
    # multilingual tiny's proj_out: 51865 x 384 in groups of 128 = 155595 groups, odd
    assert pack_axis((51865, 384), 4, 128, 1) == 0
    assert pack_axis((51865, 384), 2, 64, 1) == 0  # 311190 groups, not a multiple of 4
    assert pack_axis((51865, 512), 4, 128, 1) == 1  # base: fine
    assert pack_axis((51865, 384), 8, 128, 1) == 1
    # the random model's layers have 64 inputs: groups of 128 do not fit along axis 1
    q = get("hqq")
    entry = q.validate("g", {"library": "hqq", "scheme": "int4", "group_size": 128})
    save_checkpoint("g", entry, random_model_dir, tmp_path / "g")
    # quantize() returns the note; save_checkpoint writes it into quant.json
    notes = json.loads((tmp_path / "g" / "quant.json").read_text())["notes"]
    assert any(n.startswith("proj_out: quantized with axis=0") for n in notes)
    model, _ = load_checkpoint(tmp_path / "g", random_model_dir, "cpu")
    assert model.proj_out.meta["axis"] == 0


def test_bad_and_unsupported_entries(random_model_dir):
    q = get("hqq")
    with pytest.raises(PipelineError, match="unknown scheme 'nf4' for library 'hqq'"):
        q.validate("x", {"library": "hqq", "scheme": "nf4"})
    with pytest.raises(PipelineError, match="option group_size=100 is invalid"):
        q.validate("x", {"library": "hqq", "scheme": "int4", "group_size": 100})
    with pytest.raises(PipelineError, match="cannot run on cpu: hqq with float16 compute is a GPU"):
        q.validate("x", {"library": "hqq", "scheme": "int4", "compute_dtype": "float16",
                         "devices": ["cpu"]})
    study = Study({"model": str(random_model_dir), "splits": ["test-clean"],
                   "devices": ["cpu", "cuda"], "entries": {
                       "fp32": {"library": "fp", "scheme": "fp32"},
                       "h": {"library": "hqq", "scheme": "int4", "compute_dtype": "float16"}}})
    assert [(u["entry"], u["device"]) for u in study.unsupported()] == [("h", "cpu")]
    assert ("h", "cuda") in {(j.entry, j.device) for j in study.jobs()}
