"""ONNX Runtime: the exported graphs decode what transformers decodes, ORT's quantized head
serves the embedding lookup, support rows and errors (random models), then real tiny.en
against transformers fp32 (slow)."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper
from graph_runtime import BATCH, ids_of
from quant_roundtrip import FEATS
from real_study import MAX_WER_INCREASE, N_SCORED, pipeline_wer

from whisper_ptq import PipelineError
from whisper_ptq.checkpoint import load_checkpoint, save_checkpoint
from whisper_ptq.config import load_study
from whisper_ptq.decode import Transcriber, make_transcriber
from whisper_ptq.modeling import load_fp32
from whisper_ptq.quantizers import get, ort
from whisper_ptq.quantizers.base import linear_names

GRAPH_FILES = {"encoder.onnx", "encoder.onnx.data", "decoder.onnx", "decoder.onnx.data"}


def entry(scheme, **extra):
    return get("ort").validate(f"ort-{scheme}", {"library": "ort", "scheme": scheme, **extra})


@pytest.fixture(scope="module")
def fp32_ckpt(distinct_model_dir, tmp_path_factory):
    """The fp32 checkpoint (exported once: the export is most of a quantize step's time)."""
    out = tmp_path_factory.mktemp("ort-fp32") / "f"
    return out, save_checkpoint("f", entry("fp32"), distinct_model_dir, out)


def test_fp32_graphs_decode_what_transformers_decodes(distinct_model_dir, fp32_ckpt):
    ckpt, meta = fp32_ckpt
    assert {p.name for p in ckpt.iterdir()} == GRAPH_FILES | {"quant.json"}
    assert meta.linear_bytes == meta.fp32_linear_bytes  # every linear once, the tied head too
    model, _ = load_checkpoint(ckpt, distinct_model_dir, "cpu")
    assert model.runtime_info["version"] == onnxruntime.__version__
    decoding = {"max_new_tokens": 12}
    tok = ids_of(distinct_model_dir)
    got, timing = make_transcriber(model, tok, "cpu", decoding)(BATCH)
    want, _ = Transcriber(load_fp32(distinct_model_dir), tok, "cpu", decoding)(BATCH)
    assert got == want and len(got[0]) > 0
    assert timing["tokens"] == sum(map(len, got)) and timing["encoder"] > 0
    with pytest.raises(PipelineError, match="runs on cpu here, not cuda"):
        model.transcriber(tok, "cuda", decoding)
    # over 30 s: its 30 s windows (the last padded) decoded as one batch, ids concatenated
    long = torch.cat([FEATS, FEATS[..., :1500]], dim=-1)
    texts, timing = make_transcriber(model, tok, "cpu", decoding)(long)
    assert len(texts) == 1 and timing["longform"] > 0 and timing["encoder"] == 0
    assert 0 < timing["tokens"] <= 2 * 12


def dequantized_head(init: dict, scheme: str) -> np.ndarray:
    """The head's [vocab, d_model] weights as ORT's quantizer stored them, by hand."""
    head = ort.HEAD
    if scheme == "int8-dynamic":  # [d_model, vocab] int8; scale and zero point per column
        q = init[head + "_quantized"].astype(np.float32)
        zero = init[head + "_zero_point"].astype(np.float32)
        return ((q - zero) * init[head + "_scale"]).T
    q4 = init[head + "_Q4"]  # [vocab, blocks, block / 2]: low nibble first
    nibbles = np.stack([q4 & 0x0F, q4 >> 4], axis=-1).reshape(*q4.shape[:2], -1).astype(np.float32)
    if head + "_zero_points" in init:
        z = init[head + "_zero_points"].reshape(q4.shape[0], -1)
        zero = np.stack([z & 0x0F, z >> 4], -1).reshape(q4.shape[0], -1)[:, :q4.shape[1]]
    else:
        zero = np.full(q4.shape[:2], 8)
    w = (nibbles - zero[..., None]) * init[head + "_scales"].reshape(q4.shape[:2])[..., None]
    return w.reshape(q4.shape[0], -1)


@pytest.mark.parametrize("scheme,extra", [
    ("int8-dynamic", {}), ("int8-dynamic", {"granularity": "per-channel"}),
    ("int4", {}), ("int4", {"symmetric": False, "group_size": 16})])
def test_quantized_head_is_stored_once_and_serves_the_embedding_lookup(
        distinct_model_dir, fp32_ckpt, tmp_path, scheme, extra):
    # the quantize step's own quantization, on the fp32 checkpoint's graphs
    ckpt, meta = fp32_ckpt
    (tmp_path / "src").mkdir()
    (tmp_path / "q").mkdir()
    for name in GRAPH_FILES:
        shutil.copy(ckpt / name, tmp_path / "src" / name)
    fp32 = load_fp32(distinct_model_dir)
    linear = 0
    for graph in ort.GRAPHS:
        ort.quantize_graph(tmp_path / "src" / f"{graph}.onnx", tmp_path / "q" / f"{graph}.onnx",
                           entry(scheme, **extra))
        linear += ort.linear_initializer_bytes(
            ort.load_proto(tmp_path / "q" / f"{graph}.onnx", data=False), linear_names(fp32))
    bits = 8 if scheme == "int8-dynamic" else 4
    assert bits / 32 < linear / meta.fp32_linear_bytes < bits / 32 + 0.15
    path = tmp_path / "q" / "decoder.onnx"
    proto = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert ort.HEAD not in init  # no float32 copy of the embedding is left
    w = dequantized_head(init, scheme)
    assert w.shape == tuple(fp32.proj_out.weight.shape)
    err = np.abs(w - fp32.proj_out.weight.detach().numpy()).max()
    assert 0 < err < (0.02 if bits == 8 else 0.2)
    # the lookup's output and the head's input, exposed as graph outputs
    looked_up = next(n for n in proto.graph.node if n.name == ort.TIED).output[0]
    head = next(n for n in proto.graph.node if n.op_type.startswith("MatMul")
                and any(i.startswith(ort.HEAD) for i in n.input[1:]))
    normed = head.input[0]
    if head.op_type == "MatMulInteger":  # its input is the uint8 one: take what was quantized
        normed = next(n for n in proto.graph.node if normed in n.output).input[0]
    proto.graph.output.extend([onnx.helper.make_empty_tensor_value_info(looked_up),
                               onnx.helper.make_empty_tensor_value_info(normed)])
    onnx.save(proto, str(tmp_path / "probe.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "probe.onnx"))
    c = fp32.config
    ids = np.array([[3, 7, 11], [50, 2, 9]], dtype=np.int64)
    heads, head_dim = c.decoder_attention_heads, c.d_model // c.decoder_attention_heads
    layers = c.decoder_layers
    logits, *_, rows, normed = session.run(None, {
        "input_ids": ids, "positions": np.arange(3), "mask": np.zeros((3, 3), np.float32),
        **dict.fromkeys(ort.cache_names("past", layers), np.zeros((2, heads, 0, head_dim),
                                                                  np.float32)),
        **dict.fromkeys(ort.cache_names("cross", layers), np.zeros((2, heads, 1500, head_dim),
                                                                   np.float32))})
    np.testing.assert_allclose(rows.reshape(-1, c.d_model), w[ids.reshape(-1)], atol=1e-6)
    # and the head multiplies by the same matrix (int8: activations quantized too)
    np.testing.assert_allclose(logits, normed @ w.T, atol=0.05 if bits == 8 else 1e-3)


def test_the_encoder_runs_in_chunks_that_bound_its_attention_weights(fp32_ckpt, tmp_path):
    """The transcriber encodes ``encoder_rows`` utterances per call, as many as keep a layer's
    attention weights within the budget; each chunk's outputs are the graph's for those rows
    alone (int8 quantizes activations with one scale per call), in the batch's order."""
    ckpt, _ = fp32_ckpt
    for name in ("encoder.onnx", "encoder.onnx.data"):
        shutil.copy(ckpt / name, tmp_path / name)
    ort.quantize_graph(tmp_path / "encoder.onnx", tmp_path / "int8.onnx", entry("int8-dynamic"))
    session = onnxruntime.InferenceSession(str(tmp_path / "int8.onnx"))
    _, heads, frames, _ = session.get_outputs()[0].shape
    per_row = 4 * heads * frames ** 2  # one utterance's float32 attention weights, one layer
    rows = ort.encoder_rows(session.get_outputs()[0].shape)
    assert rows * per_row <= ort.ENCODER_ATTENTION_BYTES < (rows + 1) * per_row
    feats = np.ascontiguousarray(torch.cat([FEATS, 4 * FEATS, FEATS / 4]).numpy())
    names = [o.name for o in session.get_outputs()]
    assert names == ort.cache_names("cross", len(names) // 2)
    for k in (1, 2, 3):
        got = ort.encode(session, feats, k)
        assert list(got) == names
        for i in range(0, len(feats), k):
            for name, want in zip(names, session.run(None, {"input_features": feats[i:i + k]})):
                np.testing.assert_array_equal(got[name][i:i + k], want)
    together, alone = ort.encode(session, feats, 3), ort.encode(session, feats, 1)
    assert any(not np.array_equal(together[n][0], alone[n][0]) for n in names)


def test_encoder_benchmark_pairs_chunks_with_the_whole_batch(fp32_ckpt, tmp_path):
    from test_benchmarks import import_benchmark

    ckpt, _ = fp32_ckpt
    out = tmp_path / "enc.json"
    import_benchmark("ort_encoder").main(["--ckpt", str(ckpt), "--batch-size", "2", "--rows", "1",
                                          "--threads", "1", "--repeats", "2", "--out", str(out)])
    d = json.loads(out.read_text())
    assert d["rows"] == 1 and len(d["repeats"]) == 2
    for r in d["repeats"]:
        runs = r["runs"]
        assert [runs[w]["rows"] for w in ("whole-batch", "chunks")] == [2, 1]
        assert r["time_ratio"] == runs["chunks"]["seconds"] / runs["whole-batch"]["seconds"]
        # fp32: the same cross keys either way
        assert runs["chunks"]["checksum"] == pytest.approx(runs["whole-batch"]["checksum"])


def test_what_ort_cannot_take_is_one_clear_error(distinct_model_dir, fp32_ckpt, tmp_path):
    assert get("ort").unsupported(entry("fp32"), "cpu") is None
    assert "ONNX Runtime's CPU build" in get("ort").unsupported(entry("int4"), "cuda")
    with pytest.raises(PipelineError, match="entry 'ort-int4' cannot run on cuda: the pinned "
                                            "onnxruntime wheel is ONNX Runtime's CPU build"):
        entry("int4", devices=["cuda"])
    with pytest.raises(PipelineError, match="unknown scheme 'int2' for library 'ort'"):
        entry("int2")
    with pytest.raises(PipelineError, match="option 'group_size' does not apply to scheme "
                                            "'int8-dynamic'"):
        entry("int8-dynamic", group_size=32)
    with pytest.raises(PipelineError, match="option group_size=48 is invalid"):
        entry("int4", group_size=48)
    model = load_fp32(distinct_model_dir)
    model.config.activation_function = "relu"
    with pytest.raises(PipelineError, match="supports Whisper's decoder layer .* "
                                            "activation 'relu'"):
        ort.export(model, tmp_path)
    shutil.copytree(fp32_ckpt[0], tmp_path / "ok")
    good = (tmp_path / "ok" / "decoder.onnx").read_bytes()
    (tmp_path / "ok" / "decoder.onnx").write_bytes(good[:len(good) // 2])
    with pytest.raises(PipelineError, match="decoder.onnx is not an ONNX model ONNX Runtime "
                                            "can load: "):
        load_checkpoint(tmp_path / "ok", distinct_model_dir, "cpu")
    (tmp_path / "ok" / "decoder.onnx").write_bytes(good)
    data = tmp_path / "ok" / "encoder.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(PipelineError, match="encoder.onnx is not an ONNX model ONNX Runtime "
                                            "can load: "):
        load_checkpoint(tmp_path / "ok", distinct_model_dir, "cpu")
    data.unlink()
    (tmp_path / "ok" / "encoder.onnx").unlink()
    with pytest.raises(PipelineError, match="encoder.onnx is missing: the checkpoint is "
                                            "incomplete"):
        load_checkpoint(tmp_path / "ok", distinct_model_dir, "cpu")


def test_config_entries_run_on_cpu_only():
    study = load_study(Path(__file__).resolve().parents[2] / "config.yaml")
    names = [n for n, e in study.entries.items() if e["library"] == "ort"]
    assert names and all(get("ort").unsupported(study.entries[n], "cuda") for n in names)
    assert all(get("ort").unsupported(study.entries[n], "cpu") is None for n in names)


# -- real weights and audio ------------------------------------------------------------------
@pytest.mark.slow
def test_real_tiny_en_fp32_matches_transformers_and_int8_stays_close(tiny_en_dir, real_cache,
                                                                      tiny_fp32_wer, tmp_path):
    """The fp32 graphs on real speech give transformers fp32's WER; ORT's per-channel int8
    stays within the 8-bit bound."""
    torch.set_num_threads(2)
    for name, e in (("fp32", entry("fp32")),
                    ("int8", entry("int8-dynamic", granularity="per-channel"))):
        save_checkpoint(name, e, tiny_en_dir, tmp_path / name)
        wer = pipeline_wer(tmp_path / name, tiny_en_dir, real_cache)
        print(f"tiny.en {N_SCORED} utts: fp32 WER {tiny_fp32_wer:.2f}, ort-{name} {wer:.2f}")
        if name == "fp32":
            assert wer == tiny_fp32_wer
        assert wer - tiny_fp32_wer <= MAX_WER_INCREASE
