"""whisper.cpp runtime: ggml names, blocks and file, support rows and errors (random models),
then real tiny.en against transformers fp32 (slow)."""

import ctypes
from pathlib import Path

import _pywhispercpp
import numpy as np
import pytest
import torch
from quant_roundtrip import FEATS
from real_study import MAX_WER_INCREASE, N_SCORED, pipeline_wer

from whisper_ptq import PipelineError
from whisper_ptq.checkpoint import load_checkpoint, save_checkpoint
from whisper_ptq.config import load_study
from whisper_ptq.modeling import load_fp32
from whisper_ptq.quantizers import get, whispercpp

# bytes per block of 32 weights (ggml-common.h): float16 scale (+ float16 min for _1),
# 5-bit types' high bits in 4 bytes, then the packed quants
BLOCK_BYTES = {"q8_0": 2 + 32, "q5_1": 4 + 4 + 16, "q5_0": 2 + 4 + 16, "q4_1": 4 + 16,
               "q4_0": 2 + 16}
# relative RMS error of a Gaussian matrix after a round trip through the blocks: the step
# is (max - min) / (2**bits - 1) over a block, so each bit less roughly doubles it
RMS_BOUND = {"q8_0": 0.01, "q5_1": 0.05, "q5_0": 0.06, "q4_1": 0.1, "q4_0": 0.12}


def entry(scheme, **extra):
    return get("whispercpp").validate(f"whispercpp-{scheme}",
                                      {"library": "whispercpp", "scheme": scheme, **extra})


@pytest.fixture(scope="module")
def whisper_vocab_model_dir(random_model_dir, tmp_path_factory):
    """The random model with Whisper's English vocabulary size and special ids (whisper.cpp
    fixes them); its fabricated tokenizer decodes only the byte tokens."""
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(0)
    model = load_fp32(random_model_dir)
    config = model.config
    config.vocab_size, config.eos_token_id, config.pad_token_id = 51864, 50256, 50256
    config.bos_token_id, config.decoder_start_token_id = 50256, 50257
    config.encoder_ffn_dim = config.decoder_ffn_dim = 4 * config.d_model  # whisper.cpp's width
    out = tmp_path_factory.mktemp("whisper-vocab")
    WhisperForConditionalGeneration(config).save_pretrained(out)
    for f in random_model_dir.iterdir():
        if f.name.startswith(("tokenizer", "preprocessor", "processor", "generation")):
            (out / f.name).write_bytes(f.read_bytes())
    return out


def test_every_parameter_gets_the_name_whisper_cpp_loads(random_model_dir):
    model = load_fp32(random_model_dir)
    names = [whispercpp.ggml_name(n) for n in model.state_dict()]
    assert names.count(None) == 1  # proj_out: the head is the token embedding
    c = model.config
    assert set(names) - {None} == whispercpp.loader_names(c.encoder_layers, c.decoder_layers)
    assert len(names) - 1 == len(set(names) - {None})  # one parameter per tensor


@pytest.mark.parametrize("scheme", list(BLOCK_BYTES))
def test_blocks_have_ggml_sizes_and_dequantize_close(scheme):
    w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    blob = whispercpp.quantize_rows(w, scheme)
    assert len(blob) == w.size // 32 * BLOCK_BYTES[scheme]
    lib = whispercpp._ggml()
    back = np.zeros(w.size, dtype=np.float32)
    getattr(lib, f"dequantize_row_{scheme}")(ctypes.c_char_p(blob),
                                               back.ctypes.data_as(ctypes.c_void_p),
                                               ctypes.c_int64(w.size))
    err = np.sqrt(np.mean((back.reshape(w.shape) - w) ** 2) / np.mean(w ** 2))
    assert 0 < err < RMS_BOUND[scheme]
    with pytest.raises(PipelineError, match="rows of 40 weights do not split into blocks of 32"):
        whispercpp.quantize_rows(w[:, :40], scheme)


def test_checkpoint_is_one_ggml_file_that_whisper_cpp_reads_and_runs(whisper_vocab_model_dir,
                                                                     tmp_path):
    from transformers import WhisperTokenizer

    from whisper_ptq.decode import make_transcriber

    metas = {s: save_checkpoint(s, entry(s), whisper_vocab_model_dir, tmp_path / s)
             for s in ("f16", "q8_0", "q4_0")}
    assert {p.name for p in (tmp_path / "q8_0").iterdir()} == {"ggml-model.bin", "quant.json"}
    f16, q8, q4 = metas["f16"], metas["q8_0"], metas["q4_0"]
    # the linears' and the tied head's weights at 16, 8.5 and 4.5 bits (biases stay float32)
    for meta, bits in ((f16, 16), (q8, 8.5), (q4, 4.5)):
        assert bits / 32 < meta.linear_bytes / meta.fp32_linear_bytes < bits / 32 + 0.02
    assert f16.bytes_on_disk > q8.bytes_on_disk > q4.bytes_on_disk
    facts = q8.facts
    assert (facts["weights"], facts["group_size"], facts["symmetric"]) == ("int8", 32, True)
    assert q8.provenance["quantization_library"]["package"] == "pywhispercpp"
    model, _ = load_checkpoint(tmp_path / "q4_0", whisper_vocab_model_dir, "cpu")
    assert model.runtime_info["version"].endswith(f"whisper.cpp {whispercpp.whisper_cpp_version()}")
    run = make_transcriber(model, WhisperTokenizer.from_pretrained(whisper_vocab_model_dir), "cpu",
                           {"max_new_tokens": 3})
    texts, timing = run(torch.cat([FEATS, FEATS]))
    assert len(texts) == 2 and timing["encoder"] > 0 and timing["decoder"] >= 0
    assert 0 < timing["tokens"] <= 2 * 3  # random weights stop at the token limit at the latest
    with pytest.raises(PipelineError, match="runs on cpu here, not cuda"):
        model.transcriber(None, "cuda", {})
    # over 30 s: whole windows (the last padded), each decoded up to the token limit
    long = torch.cat([FEATS, FEATS[..., :1500]], dim=-1)
    texts, timing = run(long)
    assert len(texts) == 1 and timing["longform"] > 0 and timing["encoder"] == 0
    assert 0 < timing["tokens"] <= 2 * 3
    assert _pywhispercpp.whisper_full_n_segments(model.ctx) == 2  # one per window


def test_what_whisper_cpp_cannot_take_is_one_clear_error(random_model_dir,
                                                        whisper_vocab_model_dir, tmp_path):
    with pytest.raises(PipelineError, match="whisper.cpp needs Whisper's own vocabulary .* "
                                            "this model has 2\\d\\d tokens"):
        save_checkpoint("x", entry("q8_0"), random_model_dir, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    model = load_fp32(whisper_vocab_model_dir)
    model.config.decoder_ffn_dim = 128
    with pytest.raises(PipelineError, match="feed-forward width at 4 x d_model = 256; this model "
                                            "has 256 \\(encoder\\) and 128 \\(decoder\\)"):
        whispercpp.GgmlFile(model, "q8_0")
    # a damaged file is refused before whisper.cpp (which would crash the process) sees it
    save_checkpoint("ok", entry("q8_0"), whisper_vocab_model_dir, tmp_path / "ok")
    good = (tmp_path / "ok" / "ggml-model.bin").read_bytes()
    bad = tmp_path / "ok" / "ggml-model.bin"
    for damaged, why in ((good[:-10], "the last tensor \\('decoder.ln.bias'\\) is cut off"),
                         (good[:30], "truncated"), (b"garbage" * 9, "not a whisper.cpp ggml file")):
        bad.write_bytes(damaged)
        with pytest.raises(PipelineError, match=f"ggml-model.bin is not a complete whisper.cpp "
                                                f"model file: {why}"):
            load_checkpoint(tmp_path / "ok", whisper_vocab_model_dir, "cpu")
    short = whispercpp.GgmlFile(load_fp32(whisper_vocab_model_dir), "q8_0")
    short.chunks = short.chunks[:-4]  # header, shape, name, data of the last tensor
    short.save(bad)
    with pytest.raises(PipelineError, match="is not a whisper.cpp model file it can load: "
                                            "lacks \\['decoder.ln.bias'\\]"):
        load_checkpoint(tmp_path / "ok", whisper_vocab_model_dir, "cpu")
    assert get("whispercpp").unsupported(entry("q8_0"), "cpu") is None
    assert "CPU build of whisper.cpp" in get("whispercpp").unsupported(entry("q8_0"), "cuda")
    with pytest.raises(PipelineError, match="entry 'whispercpp-q8_0' cannot run on cuda: "
                                            "pywhispercpp's PyPI wheel is a CPU build"):
        entry("q8_0", devices=["cuda"])
    with pytest.raises(PipelineError, match="unknown scheme 'f32' for library 'whispercpp'"):
        entry("f32")


def test_config_entries_run_on_cpu_only():
    study = load_study(Path(__file__).resolve().parents[2] / "config.yaml")
    names = [n for n, e in study.entries.items() if e["library"] == "whispercpp"]
    assert names and all(get("whispercpp").unsupported(study.entries[n], "cuda") for n in names)


# -- real weights and audio ------------------------------------------------------------------
@pytest.mark.slow
def test_real_tiny_en_f16_and_q8_0_stay_close_to_fp32(tiny_en_dir, real_cache, tiny_fp32_wer,
                                                      tmp_path):
    """whisper.cpp's float16 file and its q8_0 on real speech, decoded by whisper.cpp itself:
    within the 8-bit bound of transformers fp32; conversion is deterministic."""
    torch.set_num_threads(2)
    for scheme in ("f16", "q8_0"):
        save_checkpoint(scheme, entry(scheme), tiny_en_dir, tmp_path / scheme)
        wer = pipeline_wer(tmp_path / scheme, tiny_en_dir, real_cache)
        print(f"tiny.en {N_SCORED} utts: fp32 WER {tiny_fp32_wer:.2f}, "
              f"whispercpp-{scheme} {wer:.2f}")
        assert wer - tiny_fp32_wer <= MAX_WER_INCREASE
    save_checkpoint("again", entry("q8_0"), tiny_en_dir, tmp_path / "again")
    assert ((tmp_path / "again" / "ggml-model.bin").read_bytes()
            == (tmp_path / "q8_0" / "ggml-model.bin").read_bytes())
