"""CTranslate2 runtime: conversion, checkpoint sizes, support rows, errors (tiny random model),
then real tiny.en and base against transformers fp32 (slow)."""

import ctypes.util

import ctranslate2
import pytest
import torch
from quant_roundtrip import FEATS
from real_study import MAX_WER_INCREASE, N_SCORED, pipeline_wer

from whisper_ptq import PipelineError
from whisper_ptq.checkpoint import load_checkpoint, save_checkpoint
from whisper_ptq.features import FeatureCache
from whisper_ptq.modeling import load_fp32
from whisper_ptq.quantizers import ct2, get

CPU_TYPES = ctranslate2.get_supported_compute_types("cpu")


def entry(scheme):
    return get("ct2").validate(f"ct2-{scheme}", {"library": "ct2", "scheme": scheme})


def transcribe(ckpt, model_dir, feats, decoding=None):
    from transformers import WhisperTokenizer

    from whisper_ptq.decode import make_transcriber

    model, _ = load_checkpoint(ckpt, model_dir, "cpu")
    run = make_transcriber(model, WhisperTokenizer.from_pretrained(model_dir), "cpu",
                           decoding or {"max_new_tokens": 40})
    return run(feats), model


def test_checkpoint_is_the_converted_model_with_its_sizes(random_model_dir, tmp_path):
    metas = {s: save_checkpoint(s, entry(s), random_model_dir, tmp_path / s)
             for s in ("float32", "int8")}
    assert {p.name for p in (tmp_path / "int8").iterdir()} == {
        "model.bin", "config.json", "vocabulary.json", "tokenizer.json", "quant.json"}
    f32, i8 = metas["float32"], metas["int8"]
    # fp32: the fused q/k/v linears add k's zero bias, nothing else
    assert 0 < f32.linear_bytes - f32.fp32_linear_bytes < 0.01 * f32.fp32_linear_bytes
    assert 0.25 < i8.linear_bytes / i8.fp32_linear_bytes < 0.3  # int8 + f32 row scales
    # on disk the int8 checkpoint saves at least what its linears shrink by
    saved = f32.bytes_on_disk - i8.bytes_on_disk
    assert saved >= f32.linear_bytes - i8.linear_bytes > 0.7 * f32.fp32_linear_bytes
    assert (i8.facts["weights"], i8.facts["act_mode"]) == ("int8", "dynamic")
    assert i8.provenance["quantization_library"]["version"] == ctranslate2.__version__
    (texts, timing), model = transcribe(tmp_path / "int8", random_model_dir, FEATS)
    assert len(texts) == 1 and timing["encoder"] > 0 and timing["decoder"] > 0
    assert model.runtime_info["inter_threads"] == 1
    assert model.runtime_info["intra_threads"] == torch.get_num_threads()


@pytest.fixture
def fresh_support():
    """ct2's support answers are cached per process: each test asks afresh, and leaves none."""
    ct2.supported_types.cache_clear()
    ct2.cuda_library_error.cache_clear()
    yield
    ct2.supported_types.cache_clear()
    ct2.cuda_library_error.cache_clear()


def fake_cuda(monkeypatch, types):
    """CTranslate2 answering for a GPU (``types``), or seeing none (``None``); CPU unchanged."""
    real = ctranslate2.get_supported_compute_types

    def supported(device, device_index=0):
        if device != "cuda":
            return real(device)
        if types is None:
            raise RuntimeError("CUDA failed with error no CUDA-capable device is detected")
        return set(types)

    monkeypatch.setattr(ctranslate2, "get_supported_compute_types", supported)


# CTranslate2's answer on compute capability >= 8 (A100 / H100): no int16 on CUDA
GPU_TYPES = {"float32", "int8", "int8_float32", "float16", "int8_float16", "bfloat16",
             "int8_bfloat16"}


def test_cpu_support_comes_from_ctranslate2(fresh_support):
    q = get("ct2")
    for scheme in q.schemes:
        reason = q.unsupported(entry(scheme), "cpu")
        assert (reason is None) == (scheme in CPU_TYPES), (scheme, reason)
        if reason:
            assert f"not {scheme}" in reason and "offers" in reason
    if "int16" not in CPU_TYPES:
        assert "MKL" in q.unsupported(entry("int16"), "cpu")


def test_gpu_with_cublas_12_runs_the_gpu_types(monkeypatch, fresh_support):
    fake_cuda(monkeypatch, GPU_TYPES)
    monkeypatch.setattr(ct2, "CUDA_BLAS", ctypes.util.find_library("c"))  # a loadable library
    q = get("ct2")
    for scheme in ("float32", "int8", "float16", "int8_float16", "bfloat16"):
        assert q.unsupported(entry(scheme), "cuda") is None, scheme
    reason = q.unsupported(entry("int16"), "cuda")
    assert reason.endswith("on this cuda, not int16")
    assert "bfloat16, float16, float32, int8" in reason and "MKL" not in reason


def test_gpu_without_cublas_12_is_unsupported_with_the_reason(monkeypatch, fresh_support,
                                                              random_model_dir, tmp_path):
    """A CUDA-13-only host (the GPU kit's machine): CTranslate2 sees the GPU, but its CUDA 12
    build cannot load cuBLAS 12, so every ct2 entry is an unsupported row, and loading one on
    CUDA is a clear error before CTranslate2 touches the device."""
    fake_cuda(monkeypatch, GPU_TYPES)
    monkeypatch.setattr(ct2, "CUDA_BLAS", "libcublas.so.12-absent")
    q = get("ct2")
    for scheme in q.schemes:
        reason = q.unsupported(entry(scheme), "cuda")
        assert "libcublas.so.12-absent" in reason and "OpenNMT/CTranslate2#1933" in reason, scheme
    assert q.unsupported(entry("int8"), "cpu") is None  # the CPU is not affected
    save_checkpoint("i8", entry("int8"), random_model_dir, tmp_path / "i8")
    with pytest.raises(PipelineError, match="cannot run on cuda: CTranslate2 .* CUDA 12 build"):
        load_checkpoint(tmp_path / "i8", random_model_dir, "cuda")


def test_where_ctranslate2_sees_no_gpu_its_documented_gpu_types_are_assumed(monkeypatch,
                                                                             fresh_support):
    """A login node plans GPU jobs: the CUDA rows follow CTranslate2's documented types, and the
    library probe is not asked (the GPU job asks at load)."""
    fake_cuda(monkeypatch, None)
    monkeypatch.setattr(ct2, "CUDA_BLAS", "libcublas.so.12-absent")
    q = get("ct2")
    for scheme in ("float32", "int8", "float16", "int8_float16", "bfloat16"):
        assert q.unsupported(entry(scheme), "cuda") is None, scheme
    assert q.unsupported(entry("int16"), "cuda") == "int16 is a CPU compute type of CTranslate2"


@pytest.mark.skipif(ctranslate2.get_cuda_device_count() > 0, reason="this host has a CUDA device")
def test_device_mismatch_and_bad_entries_are_clear_errors(random_model_dir, tmp_path):
    save_checkpoint("i8", entry("int8"), random_model_dir, tmp_path / "i8")
    with pytest.raises(PipelineError, match="cannot run compute type int8 on cuda here"):
        load_checkpoint(tmp_path / "i8", random_model_dir, "cuda")
    model, _ = load_checkpoint(tmp_path / "i8", random_model_dir, "cpu")
    with pytest.raises(PipelineError, match="loaded on cpu, not cuda"):
        model.transcriber(None, "cuda", {})
    with pytest.raises(PipelineError, match="unknown scheme 'int4' for library 'ct2'"):
        entry("int4")
    with pytest.raises(PipelineError, match="option 'compile' is not known to library 'ct2'"):
        get("ct2").validate("x", {"library": "ct2", "scheme": "int8", "compile": True})


# -- real weights and audio ------------------------------------------------------------------
def fp32_texts(model_dir, feats):
    from transformers import WhisperTokenizer

    from whisper_ptq.decode import Transcriber

    model = load_fp32(model_dir)
    run = Transcriber(model, WhisperTokenizer.from_pretrained(model_dir), "cpu",
                      {"max_new_tokens": 160})
    return run(feats)[0]


def real_feats(real_cache, n):
    d, calib = real_cache
    cache = FeatureCache(d / "f.safetensors")
    return torch.stack([cache.get(uid) for uid in calib[:n]])


@pytest.mark.slow
def test_real_tiny_en_fp32_matches_transformers_and_int8_stays_close(tiny_en_dir, real_cache,
                                                                      tiny_fp32_wer, tmp_path):
    """tiny.en (English-only prompt: SOT, no-timestamps): CTranslate2 float32 decodes what
    transformers fp32 decodes; int8 stays within the 8-bit bound; conversion is deterministic."""
    torch.set_num_threads(2)
    feats = real_feats(real_cache, 4)
    save_checkpoint("f32", entry("float32"), tiny_en_dir, tmp_path / "f32")
    (texts, _), model = transcribe(tmp_path / "f32", tiny_en_dir, feats, {"max_new_tokens": 160})
    assert model.prompt({}) == [50257, 50362]
    assert texts == fp32_texts(tiny_en_dir, feats)
    base = tiny_fp32_wer
    save_checkpoint("i8", entry("int8"), tiny_en_dir, tmp_path / "i8")
    wer = pipeline_wer(tmp_path / "i8", tiny_en_dir, real_cache)
    print(f"tiny.en {N_SCORED} utts: fp32 WER {base:.2f}, ct2-int8 {wer:.2f}")
    assert wer - base <= MAX_WER_INCREASE
    save_checkpoint("i8b", entry("int8"), tiny_en_dir, tmp_path / "i8b")
    assert (tmp_path / "i8" / "model.bin").read_bytes() == (tmp_path / "i8b" / "model.bin").read_bytes()


@pytest.mark.slow
def test_real_base_fp32_matches_transformers(base_dir, real_cache, tmp_path):
    """Multilingual base (prompt SOT, en, transcribe, no-timestamps) on the same features
    (tiny.en's and base's feature extractors are identical: 80 mel bins)."""
    torch.set_num_threads(2)
    feats = real_feats(real_cache, 2)
    save_checkpoint("f32", entry("float32"), base_dir, tmp_path / "f32")
    (texts, _), model = transcribe(tmp_path / "f32", base_dir, feats,
                                   {"max_new_tokens": 160, "language": "en", "task": "transcribe"})
    assert model.prompt({}) == [50258, 50259, 50359, 50363]
    assert texts == fp32_texts(base_dir, feats)


def test_generates_as_many_tokens_as_transformers(distinct_model_dir, tmp_path):
    """CTranslate2 stops at half its max_length (openai-whisper's sample_len): a hypothesis
    that never ends (this random model's) is as long as transformers' all the same."""
    from graph_runtime import BATCH, ids_of

    from whisper_ptq.decode import Transcriber

    save_checkpoint("ct2-float32", entry("float32"), distinct_model_dir, tmp_path / "f32")
    model, _ = load_checkpoint(tmp_path / "f32", distinct_model_dir, "cpu")
    tok, decoding = ids_of(distinct_model_dir), {"max_new_tokens": 12}
    got, timing = model.transcriber(tok, "cpu", decoding)(BATCH)
    want, _ = Transcriber(load_fp32(distinct_model_dir), tok, "cpu", decoding)(BATCH)
    assert got == want and [len(t) for t in got] == [12, 12] and timing["tokens"] == 24
