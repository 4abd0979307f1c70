"""bitsandbytes module: NF4 / FP4 (± double quant) and LLM.int8 on CPU (tiny random model)."""

import json

import pytest
import torch
from quant_roundtrip import assert_same_outputs, fp32_logits, outputs, roundtrip

from whisper_ptq import PipelineError
from whisper_ptq.checkpoint import load_checkpoint, save_checkpoint
from whisper_ptq.modeling import load_fp32
from whisper_ptq.quantizers import get


@pytest.mark.parametrize("raw", [{"scheme": "nf4"}, {"scheme": "fp4", "double_quant": True},
                                 {"scheme": "int8"}], ids=["nf4", "fp4-dq", "int8"])
def test_reloads_identically(random_model_dir, tmp_path, raw):
    entry, model, reloaded = roundtrip("bnb", raw, random_model_dir, tmp_path)
    fc1 = reloaded.model.encoder.layers[0].fc1
    assert type(fc1).__name__ == ("Linear8bitLt" if raw["scheme"] == "int8" else "Linear4bit")
    if raw["scheme"] != "int8":  # (before any forward pass: the CPU repack flattens the state)
        assert fc1.weight.quant_state.quant_type == raw["scheme"]
        assert fc1.weight.quant_state.nested == raw.get("double_quant", False)
    logits = assert_same_outputs(model, reloaded)
    assert not torch.equal(logits, fp32_logits(random_model_dir))
    # bitsandbytes leaves the output head tied to the fp32 embedding
    assert type(reloaded.proj_out) is torch.nn.Linear
    assert reloaded.proj_out.weight.data_ptr() == reloaded.model.decoder.embed_tokens.weight.data_ptr()


def test_saving_after_a_forward_pass_is_refused(random_model_dir, tmp_path):
    """The CPU 4-bit repack-on-first-forward bug: a checkpoint must be written before."""
    q = get("bnb")
    entry = q.validate("n", {"library": "bnb", "scheme": "nf4"})
    model = q.quantize(load_fp32(random_model_dir), entry).model
    q.save(model, entry, tmp_path / "before")  # fine before any forward pass
    outputs(model)
    assert not [a for a in vars(model) if a.startswith("_ptq")]  # the guard is not on the model
    with pytest.raises(PipelineError, match="already run a forward pass"):
        q.save(model, entry, tmp_path)


def test_meta_sizes_and_facts(random_model_dir, tmp_path):
    q = get("bnb")
    metas = {n: save_checkpoint(n, q.validate(n, {"library": "bnb", **raw}), random_model_dir,
                                tmp_path / n)
             for n, raw in {"nf4": {"scheme": "nf4"}, "nf4-dq": {"scheme": "nf4", "double_quant": True},
                            "int8": {"scheme": "int8", "threshold": 6}}.items()}
    fp32 = metas["nf4"].fp32_linear_bytes
    cfg = json.loads((random_model_dir / "config.json").read_text())
    head = cfg["vocab_size"] * cfg["d_model"] * 4  # the tied fp32 proj_out, in the linear bytes
    body = {n: (m.linear_bytes - head) / (fp32 - head) for n, m in metas.items()}
    assert 0.125 < body["nf4"] < 0.2  # 4-bit + a float32 absmax per 64 weights
    assert 0.25 < body["int8"] < 0.3
    assert metas["nf4"].facts["weights"] == "nf4"
    assert metas["nf4-dq"].facts["weights"] == "nf4 + double-quant int8 scales"
    f8 = metas["int8"].facts
    assert (f8["act_mode"], f8["granularity"], f8["symmetric"]) == ("dynamic", "per-channel", True)
    assert metas["int8"].config["threshold"] == 6.0
    assert any("proj_out" in u for u in f8["unquantized"])
    model, meta = load_checkpoint(tmp_path / "nf4-dq", random_model_dir, "cpu")
    assert meta.entry == "nf4-dq"


def test_bad_entries_are_clear_errors():
    q = get("bnb")
    with pytest.raises(PipelineError, match="unknown scheme 'int4' for library 'bnb'"):
        q.validate("x", {"library": "bnb", "scheme": "int4"})
    with pytest.raises(PipelineError, match="takes only 'threshold'"):
        q.validate("x", {"library": "bnb", "scheme": "int8", "double_quant": True})
    with pytest.raises(PipelineError, match="'threshold' is an LLM.int8 option"):
        q.validate("x", {"library": "bnb", "scheme": "nf4", "threshold": 6.0})
    with pytest.raises(PipelineError, match="option compute_dtype='float64' is invalid"):
        q.validate("x", {"library": "bnb", "scheme": "nf4", "compute_dtype": "float64"})
