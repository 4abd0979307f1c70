"""OpenVINO: the IR of the exported graphs decodes what transformers decodes with its cache in
the decoder's states, NNCF's compressed weights and the sizes counted from them, support rows
and errors (random models), then real tiny.en against transformers fp32 (slow)."""

import shutil
from pathlib import Path

import openvino
import pytest
import torch
from graph_runtime import BATCH, ids_of
from quant_roundtrip import FEATS
from real_study import MAX_WER_INCREASE, N_SCORED, pipeline_wer

from whisper_ptq import PipelineError
from whisper_ptq.checkpoint import load_checkpoint, save_checkpoint
from whisper_ptq.config import load_study
from whisper_ptq.decode import Transcriber, make_transcriber
from whisper_ptq.modeling import load_fp32
from whisper_ptq.quantizers import LIBRARIES, get, module_paths, ov


def entry(scheme, **extra):
    return get("openvino").validate(f"openvino-{scheme}",
                                    {"library": "openvino", "scheme": scheme, **extra})


@pytest.fixture(scope="module")
def fp32_ckpt(distinct_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("openvino-fp32") / "f"
    return out, save_checkpoint("f", entry("fp32"), distinct_model_dir, out)


def test_fp32_ir_decodes_what_transformers_decodes_with_a_stateful_cache(distinct_model_dir,
                                                                       fp32_ckpt):
    ckpt, meta = fp32_ckpt
    assert {p.name for p in ckpt.iterdir()} == set(ov.FILES) | {"quant.json"}
    assert meta.linear_bytes == meta.fp32_linear_bytes  # every linear once, the tied head too
    # the cache is the decoder's state: one per past input of the export, none left as inputs
    decoder = openvino.Core().read_model(ckpt / "decoder.xml")
    layers = load_fp32(distinct_model_dir).config.decoder_layers
    assert not [i for i in decoder.inputs if i.get_any_name().startswith("past_")]
    assert len(decoder.get_sinks()) == 2 * layers
    model, _ = load_checkpoint(ckpt, distinct_model_dir, "cpu")
    info = model.runtime_info
    assert (info["version"], info["inference_precision_hint"], info["inference_num_threads"]) \
        == (ov._version(), "f32", str(torch.get_num_threads()))
    decoding = {"max_new_tokens": 12}
    tok = ids_of(distinct_model_dir)
    transcriber = make_transcriber(model, tok, "cpu", decoding)
    want, _ = Transcriber(load_fp32(distinct_model_dir), tok, "cpu", decoding)(BATCH)
    got, timing = transcriber(BATCH)
    assert got == want and len(got[0]) > 0
    # the decoder's request (which reads the batch's cross keys and values in place) is gone
    assert transcriber.request is None
    assert timing["tokens"] == sum(map(len, got)) and timing["encoder"] > 0
    # the states are emptied for each batch: a second batch (of another size) decodes the same
    assert transcriber(BATCH[1:])[0] == want[1:]
    with pytest.raises(PipelineError, match="runs on cpu here, not cuda"):
        model.transcriber(tok, "cuda", decoding)
    long = torch.cat([FEATS, FEATS[..., :1500]], dim=-1)  # over 30 s: its windows as one batch
    texts, timing = transcriber(long)
    assert len(texts) == 1 and timing["longform"] > 0 and 0 < timing["tokens"] <= 2 * 12


# (config.yaml's asymmetric int8 and symmetric int4 are the real-weight test's and the
# pipeline runs'; here the other side of each)
@pytest.mark.parametrize("scheme,extra,bits,element", [
    ("int8", {"symmetric": True}, 8, "i8"),
    ("int4", {"symmetric": False, "group_size": 64, "dynamic_quantization_group_size": 0}, 4,
     "u4")])
def test_nncf_compresses_every_linear_and_the_sizes_count_it(distinct_model_dir, fp32_ckpt,
                                                              tmp_path, scheme, extra, bits,
                                                              element):
    e = entry(scheme, **extra)
    meta = save_checkpoint("q", e, distinct_model_dir, tmp_path / "q")
    assert bits / 32 < meta.linear_bytes / meta.fp32_linear_bytes < bits / 32 + 0.3
    assert meta.bytes_on_disk < fp32_ckpt[1].bytes_on_disk
    core, types = openvino.Core(), {}
    for graph in ("encoder", "decoder"):
        for op, constants in ov.weight_constants(core.read_model(tmp_path / "q" / f"{graph}.xml")
                                                 ).items():
            if op.get_type_name() == "MatMul":
                types[op.get_friendly_name()] = {c.get_element_type().get_type_name()
                                                 for c in constants}
    # every linear's weight is compressed; int4 keeps some in NNCF's int8 backup, as noted
    assert types and all({element, "u8"} & t for t in types.values())
    if bits == 8:
        assert all(element in t for t in types.values()) and meta.notes == []
    else:
        assert any(element in t for t in types.values())
        assert "NNCF's backup precision" in meta.notes[0] and "proj_out.weight" in meta.notes[0]
    assert meta.facts["weights"] == scheme and meta.facts["symmetric"] == e["symmetric"]
    model, _ = load_checkpoint(tmp_path / "q", distinct_model_dir, "cpu")
    group = e["dynamic_quantization_group_size"]
    assert model.runtime_info["dynamic_quantization_group_size"] == str(group)
    assert meta.facts["act_mode"] == ("dynamic" if group else "none")
    texts, _ = make_transcriber(model, ids_of(distinct_model_dir), "cpu",
                                {"max_new_tokens": 4})(BATCH)
    assert len(texts) == len(BATCH)


def test_what_openvino_cannot_take_is_one_clear_error(distinct_model_dir, fp32_ckpt, tmp_path):
    assert "has no CUDA device" in get("openvino").unsupported(entry("int8"), "cuda")
    with pytest.raises(PipelineError, match="entry 'openvino-int8' cannot run on cuda: "
                                            "OpenVINO's GPU plugin runs Intel GPUs"):
        entry("int8", devices=["cuda"])
    with pytest.raises(PipelineError, match="unknown scheme 'int2' for library 'openvino'"):
        entry("int2")
    with pytest.raises(PipelineError, match="option 'group_size' does not apply to scheme "
                                            "'int8' of library 'openvino'"):
        entry("int8", group_size=32)
    with pytest.raises(PipelineError, match="option 'symmetric' does not apply to scheme "
                                            "'fp32'"):
        entry("fp32", symmetric=True)
    with pytest.raises(PipelineError, match="option group_size=16 is invalid"):
        entry("int4", group_size=16)
    with pytest.raises(PipelineError, match="group_size 128 does not divide this model's layer "
                                            "widths"):  # the random model's are 64
        save_checkpoint("g", entry("int4"), distinct_model_dir, tmp_path / "g")
    assert not (tmp_path / "g").exists()
    ok = tmp_path / "ok"
    shutil.copytree(fp32_ckpt[0], ok)
    good = (ok / "decoder.xml").read_bytes()
    (ok / "decoder.xml").write_bytes(good[:len(good) // 2])
    with pytest.raises(PipelineError, match="decoder.xml is not an OpenVINO model OpenVINO can "
                                            "load: "):
        load_checkpoint(ok, distinct_model_dir, "cpu")
    (ok / "decoder.xml").write_bytes(good)
    data = ok / "encoder.bin"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(PipelineError, match="encoder.xml is not an OpenVINO model OpenVINO can "
                                            "load: "):
        load_checkpoint(ok, distinct_model_dir, "cpu")
    data.unlink()
    with pytest.raises(PipelineError, match="encoder.bin is missing: the checkpoint is "
                                            "incomplete"):
        load_checkpoint(ok, distinct_model_dir, "cpu")


def test_its_quantize_jobs_depend_on_the_onnx_runtime_module_too():
    """The quantize rule's inputs: editing ort.py (the export) re-runs the OpenVINO entries;
    every other library depends on its own module only."""
    assert [p.name for p in module_paths("openvino")] == ["ov.py", "ort.py"]
    for library, module in LIBRARIES.items():
        if library != "openvino":
            assert module_paths(library) == [Path(ov.__file__).with_name(f"{module}.py")]


def test_config_entries_run_on_cpu_only():
    study = load_study(Path(__file__).resolve().parents[2] / "config.yaml")
    names = [n for n, e in study.entries.items() if e["library"] == "openvino"]
    assert names and all(get("openvino").unsupported(study.entries[n], "cuda") for n in names)
    assert all(get("openvino").unsupported(study.entries[n], "cpu") is None for n in names)


# -- real weights and audio ------------------------------------------------------------------
@pytest.mark.slow
def test_real_tiny_en_int8_stays_close(tiny_en_dir, real_cache, tiny_fp32_wer, tmp_path):
    """NNCF's int8 (config.yaml's) on real speech stays within the 8-bit bound. (The fp32 IR
    decodes transformers' tokens exactly, above; the exported graphs' fp32 on real speech is
    test_quant_ort's.)"""
    torch.set_num_threads(2)
    save_checkpoint("int8", entry("int8"), tiny_en_dir, tmp_path / "int8")
    wer = pipeline_wer(tmp_path / "int8", tiny_en_dir, real_cache)
    print(f"tiny.en {N_SCORED} utts: fp32 WER {tiny_fp32_wer:.2f}, openvino-int8 {wer:.2f}")
    assert wer - tiny_fp32_wer <= MAX_WER_INCREASE
