"""torchao: int8 weight-only, int8 dynamic, int4 weight-only (tiny random model), then the
int8 schemes on real tiny.en (slow)."""

import json

import pytest
import torch
from quant_roundtrip import assert_same_outputs, fp32_logits, roundtrip
from real_study import MAX_WER_INCREASE, N_SCORED, pipeline_wer

from whisper_ptq import PipelineError
from whisper_ptq.checkpoint import load_checkpoint, save_checkpoint
from whisper_ptq.quantizers import get

# the random model's linears have 64 or 128 inputs: int4 groups of 32 fit them all
RAW = {"int8wo": {"scheme": "int8wo"}, "int8dyn": {"scheme": "int8dyn"},
       "int4wo": {"scheme": "int4wo", "group_size": 32}}


@pytest.mark.parametrize("name", list(RAW))
def test_reloads_identically_without_pickle(random_model_dir, tmp_path, name):
    entry, model, reloaded = roundtrip("torchao", RAW[name], random_model_dir, tmp_path)
    fc1 = reloaded.model.encoder.layers[0].fc1.weight
    assert type(fc1).__name__ == ("Int4OpaqueTensor" if name == "int4wo" else "Int8Tensor")
    files = {p.name for p in tmp_path.iterdir()}
    assert files == ({"model.pt"} if name == "int4wo" else {"model.safetensors"})
    logits = assert_same_outputs(model, reloaded)
    assert not torch.equal(logits, fp32_logits(random_model_dir))
    head = reloaded.proj_out.weight
    if name == "int4wo":  # the head stays float, tied to the embedding
        assert type(head) is torch.nn.Parameter
        assert head.data_ptr() == reloaded.model.decoder.embed_tokens.weight.data_ptr()
    else:
        assert type(head).__name__ == "Int8Tensor"


def test_meta_sizes_and_facts(random_model_dir, tmp_path):
    q = get("torchao")
    metas = {n: save_checkpoint(n, q.validate(n, {"library": "torchao", **raw}), random_model_dir,
                                tmp_path / n) for n, raw in RAW.items()}
    fp32 = metas["int8wo"].fp32_linear_bytes
    assert 0.25 < metas["int8wo"].linear_bytes / fp32 < 0.3  # int8 + a scale per row
    cfg = json.loads((random_model_dir / "config.json").read_text())
    head = cfg["vocab_size"] * cfg["d_model"] * 4  # int4: the fp32 head is counted in full
    assert 0.125 < (metas["int4wo"].linear_bytes - head) / (fp32 - head) < 0.2
    assert metas["int4wo"].notes == []  # every other linear was packed
    f = metas["int8dyn"].facts
    assert (f["weights"], f["act_mode"], f["granularity"], f["compile"]) == (
        "int8", "dynamic", "per-channel", False)
    assert metas["int4wo"].facts["group_size"] == 32
    assert metas["int8wo"].provenance["quantization_library"]["package"] == "torchao"


def test_int4_notes_the_layers_torchao_leaves_float(random_model_dir):
    q = get("torchao")
    entry = q.validate("x", {"library": "torchao", "scheme": "int4wo", "group_size": 128})
    from whisper_ptq.modeling import load_fp32

    model, notes = q.quantize(load_fp32(random_model_dir), entry)
    assert notes and all("left float by torchao" in n for n in notes)
    assert not hasattr(model, "ptq_notes")  # the notes come back, not on the model


def test_int4_is_an_unsupported_row_on_cuda():
    """Its CPU-packed tensor has CPU kernels only (the GPU check lists it with this reason)."""
    q = get("torchao")
    entry = q.validate("x", {"library": "torchao", "scheme": "int4wo", "group_size": 128})
    assert "Int4WeightOnlyConfig" in q.unsupported(entry, "cuda")
    assert q.unsupported(entry, "cpu") is None
    assert q.unsupported(q.validate("y", {"library": "torchao", "scheme": "int8wo"}), "cuda") is None


@pytest.mark.slow  # inductor compiles encoder, decoder and head: most of this file's time
def test_compiled_entry_decodes_like_eager(random_model_dir, tmp_path):
    q = get("torchao")
    for name, compile_ in (("eager", False), ("compiled", True)):
        entry = q.validate(name, {"library": "torchao", "scheme": "int8wo", "compile": compile_})
        save_checkpoint(name, entry, random_model_dir, tmp_path / name)
    eager, _ = load_checkpoint(tmp_path / "eager", random_model_dir, "cpu")
    compiled, meta = load_checkpoint(tmp_path / "compiled", random_model_dir, "cpu")
    assert meta.facts["compile"] is True
    feats = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = eager.generate(feats, max_new_tokens=3, do_sample=False, num_beams=1)
        b = compiled.generate(feats, max_new_tokens=3, do_sample=False, num_beams=1)
    assert torch.equal(a, b)


def test_bad_entries_and_devices_are_clear_errors(random_model_dir, tmp_path):
    q = get("torchao")
    with pytest.raises(PipelineError, match="unknown scheme 'int2' for library 'torchao'"):
        q.validate("x", {"library": "torchao", "scheme": "int2"})
    with pytest.raises(PipelineError, match="'group_size' is an int4wo option"):
        q.validate("x", {"library": "torchao", "scheme": "int8wo", "group_size": 128})
    with pytest.raises(PipelineError, match="option group_size=100 is invalid"):
        q.validate("x", {"library": "torchao", "scheme": "int4wo", "group_size": 100})
    with pytest.raises(PipelineError, match="cannot run on cuda: torchao's CUDA int4"):
        q.validate("x", {"library": "torchao", "scheme": "int4wo", "devices": ["cuda"]})
    entry = q.validate("i4", {"library": "torchao", **RAW["int4wo"]})
    save_checkpoint("i4", entry, random_model_dir, tmp_path / "i4")
    with pytest.raises(PipelineError, match="cannot run on cuda"):
        load_checkpoint(tmp_path / "i4", random_model_dir, "cuda")


@pytest.mark.slow
def test_real_tiny_en_int8_stays_close_and_reloads_identically(tiny_en_dir, real_cache,
                                                               tiny_fp32_wer, tmp_path):
    from whisper_ptq.features import FeatureCache
    from whisper_ptq.modeling import load_fp32

    torch.set_num_threads(2)
    q = get("torchao")
    base = tiny_fp32_wer
    d, calib = real_cache
    # one utterance, 40 tokens: a reload that changed the weights diverges within a few
    feats = FeatureCache(d / "f.safetensors").get(calib[0])[None]
    for scheme in ("int8wo", "int8dyn"):
        entry = q.validate(scheme, {"library": "torchao", "scheme": scheme})
        save_checkpoint(scheme, entry, tiny_en_dir, tmp_path / scheme)
        wer = pipeline_wer(tmp_path / scheme, tiny_en_dir, real_cache)
        print(f"tiny.en {N_SCORED} utts: fp32 WER {base:.2f}, torchao-{scheme} {wer:.2f}")
        assert wer - base <= MAX_WER_INCREASE
        model = q.quantize(load_fp32(tiny_en_dir), entry).model
        reloaded, _ = load_checkpoint(tmp_path / scheme, tiny_en_dir, "cpu")
        with torch.no_grad():
            a = model.generate(feats, max_new_tokens=40)
            b = reloaded.generate(feats, max_new_tokens=40)
        assert torch.equal(a, b)
