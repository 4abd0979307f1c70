"""Shared fixtures: real LibriSpeech mini archives, real Whisper weights, tiny random models.

Real assets come from ``../shared`` (next to the checkout); tests that need them skip
cleanly where it is absent. Real checkpoints are written once by
``../shared/tools/real_whisper.py`` into ``$WHISPER_PTQ_CACHE`` (default
``~/.cache/whisper-hf``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
MINI = SHARED / "data" / "librispeech-mini"
REAL_WHISPER = SHARED / "tools" / "real_whisper.py"
CACHE = Path(os.environ.get("WHISPER_PTQ_CACHE", Path.home() / ".cache" / "whisper-hf"))


def real_model_dir(name: str) -> Path:
    """A real OpenAI Whisper checkpoint (tiny.en or base) in HF format, made once."""
    if not REAL_WHISPER.is_file():
        pytest.skip("../shared/tools/real_whisper.py is absent")
    dest = CACHE / name
    if not (dest / "model.safetensors").is_file():
        subprocess.run([sys.executable, str(REAL_WHISPER), name, str(dest)], check=True)
    return dest


@pytest.fixture(scope="session")
def mini_dir() -> Path:
    if not (MINI / "md5sum.txt").is_file():
        pytest.skip("../shared/data/librispeech-mini is absent")
    return MINI


@pytest.fixture(scope="session")
def tiny_en_dir() -> Path:
    return real_model_dir("tiny.en")


@pytest.fixture(scope="session")
def base_dir() -> Path:
    return real_model_dir("base")


@pytest.fixture(scope="session")
def clean_split_dir(mini_dir, tmp_path_factory) -> Path:
    """test-clean of the mini set, extracted (120 real utterances)."""
    from whisper_ptq.data import extract_split

    return extract_split(mini_dir / "test-clean.tar.gz", "test-clean",
                         tmp_path_factory.mktemp("ls") / "test-clean")


@pytest.fixture(scope="session")
def fake_mirror(tmp_path_factory) -> Path:
    """A fabricated openslr mirror (archives.make_mirror): test-clean and test-other, 3
    speakers × 3 speechlike utterances each, md5sum.txt. No ../shared needed."""
    from archives import make_mirror

    return make_mirror(tmp_path_factory.mktemp("fake-mirror"))


@pytest.fixture(scope="session")
def fake_split_dir(fake_mirror, tmp_path_factory) -> Path:
    """The fabricated test-clean, extracted."""
    from whisper_ptq.data import extract_split

    return extract_split(fake_mirror / "test-clean.tar.gz", "test-clean",
                         tmp_path_factory.mktemp("fake-ls") / "test-clean")


@pytest.fixture(scope="session")
def real_cache(clean_split_dir, tiny_en_dir, tmp_path_factory):
    """tiny.en features of the real-weight check (real_study): (cache dir, calibration ids)."""
    from real_study import build_cache

    return build_cache(clean_split_dir, tiny_en_dir, tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="session")
def tiny_fp32_wer(real_cache, tiny_en_dir, tmp_path_factory) -> float:
    """The fp32 baseline of the real-weight check, computed once for every library's test."""
    from real_study import pipeline_wer

    from whisper_ptq.checkpoint import save_checkpoint
    from whisper_ptq.quantizers import get

    ckpt = tmp_path_factory.mktemp("tiny-fp32") / "fp32"
    save_checkpoint("fp32", get("fp").validate("fp32", {"library": "fp", "scheme": "fp32"}),
                    tiny_en_dir, ckpt)
    return pipeline_wer(ckpt, tiny_en_dir, real_cache)


def make_random_model_dir(path: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A tiny randomly initialised Whisper (mechanics only) with ``tokenizer_dir``'s tokenizer
    (a real checkpoint's, or make_tokenizer_dir's)."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    real = WhisperConfig.from_pretrained(tokenizer_dir)
    config = WhisperConfig(
        vocab_size=real.vocab_size, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128,
        decoder_ffn_dim=128, num_mel_bins=80, max_source_positions=1500,
        max_target_positions=448, pad_token_id=real.pad_token_id, bos_token_id=real.bos_token_id,
        eos_token_id=real.eos_token_id, decoder_start_token_id=real.decoder_start_token_id,
        suppress_tokens=[], begin_suppress_tokens=[],
    )
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # random init zeroes the pad row; quanto float8 scales hate zeros
        emb = model.model.decoder.embed_tokens.weight
        emb[config.pad_token_id].normal_(0, 0.02)
    model.generation_config = GenerationConfig.from_pretrained(tokenizer_dir)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json",
                 "preprocessor_config.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, path / name)
    return path


# Whisper's special tokens, in its order (ids right after the 256 byte tokens here)
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def make_tokenizer_dir(path: Path) -> Path:
    """A fabricated English-only Whisper tokenizer set, made offline: byte-level BPE over the
    256 byte tokens (no merges) plus Whisper's special tokens, the 80-bin feature extractor,
    and the config.json / generation_config.json ids that go with them. Enough for
    make_random_model_dir, so unit tests need no real checkpoint (../shared)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperProcessor, WhisperTokenizer)

    tok = WhisperTokenizer(vocab={c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))},
                           merges=[])
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    ids = dict(zip(SPECIALS, tok.convert_tokens_to_ids(SPECIALS)))
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80),
                     tokenizer=tok).save_pretrained(path)
    eos, start = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    WhisperConfig(vocab_size=len(tok), pad_token_id=eos, bos_token_id=eos, eos_token_id=eos,
                  decoder_start_token_id=start).save_pretrained(path)
    GenerationConfig(bos_token_id=start, decoder_start_token_id=start, eos_token_id=eos,
                     pad_token_id=eos, no_timestamps_token_id=ids["<|notimestamps|>"],
                     is_multilingual=False, max_length=448, suppress_tokens=[],
                     begin_suppress_tokens=[eos]).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> Path:
    """A tiny random Whisper with a fabricated tokenizer: no ../shared needed."""
    tokenizer = make_tokenizer_dir(tmp_path_factory.mktemp("fabricated-tokenizer"))
    return make_random_model_dir(tmp_path_factory.mktemp("random-whisper"), tokenizer)


@pytest.fixture
def random_features(tmp_path):
    """Six utterances of random log-mel frames (two speakers) and their manifest."""
    import numpy as np
    from safetensors.numpy import save_file

    from whisper_ptq.io import write_jsonl

    rng = np.random.default_rng(0)
    ids = [f"{s}-1-{i:04d}" for s in (1, 2) for i in range(3)]
    save_file({i: rng.normal(size=(80, 3000)).astype(np.float32) for i in ids}, tmp_path / "f.st")
    write_jsonl(tmp_path / "m.jsonl", [{"id": i, "speaker": i.split("-")[0], "duration": 10.0,
                                        "reference": "HELLO", "n_frames": 3000} for i in ids])
    return tmp_path / "f.st", tmp_path / "m.jsonl"


@pytest.fixture
def model_and_tokenizer(random_model_dir):
    """The random model, loaded, with its tokenizer."""
    from transformers import WhisperTokenizer

    from whisper_ptq.modeling import load_fp32

    return load_fp32(random_model_dir), WhisperTokenizer.from_pretrained(random_model_dir)


@pytest.fixture(scope="session")
def distinct_model_dir(random_model_dir, tmp_path_factory) -> Path:
    """The random model with every parameter distinct: its zero biases and unit layer norms
    would be one initializer each after the ONNX exporter's deduplication of equal constants
    (trained weights never are equal), and the exported runtimes' tests count linears by
    their names."""
    import torch

    from whisper_ptq.modeling import load_fp32

    torch.manual_seed(0)
    model = load_fp32(random_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("distinct")
    model.save_pretrained(out)
    for f in random_model_dir.iterdir():  # its tokenizer and feature extractor files
        if not (out / f.name).exists():
            (out / f.name).write_bytes(f.read_bytes())
    return out


# --- SLURM's startup probe ---------------------------------------------------------------
# Every Snakemake start loads the SLURM executor plugin, which runs `scontrol show config` and
# waits up to 10 s when SLURM's tools are installed but no controller answers (after
# tests/workflow/test_slurm.py stopped its cluster, or on a machine that has slurm-wlm and no
# daemons). /dev/null makes scontrol fail at once; test_slurm's cluster fixture puts the
# site's value back while its cluster runs (site_slurm_conf).
SITE_SLURM_CONF = os.environ.get("SLURM_CONF")


@pytest.fixture(scope="session", autouse=True)
def no_slurm_probe():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", "/dev/null")
        yield


@pytest.fixture(scope="module")
def site_slurm_conf():
    """SLURM_CONF as the session found it (unset: scontrol reads /etc/slurm/slurm.conf)."""
    with pytest.MonkeyPatch.context() as mp:
        if SITE_SLURM_CONF is None:
            mp.delenv("SLURM_CONF", raising=False)
        else:
            mp.setenv("SLURM_CONF", SITE_SLURM_CONF)
        yield


# --- the slow marker, enforced ------------------------------------------------------------
# Every test that reads real weights or audio, or runs Snakemake, is marked slow (README,
# "Tests"): `-m "not slow"` is then the fast unit suite that needs no ../shared.
REAL_ASSETS = {"tiny_en_dir", "base_dir", "mini_dir", "clean_split_dir", "real_cache"}
_current = {"item": None, "spawned": []}


def pytest_collection_modifyitems(config, items):
    unmarked = [f"{item.nodeid} (uses {', '.join(sorted(REAL_ASSETS & set(item.fixturenames)))})"
                for item in items
                if REAL_ASSETS & set(item.fixturenames) and not item.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError("real weights or audio without @pytest.mark.slow:\n  "
                                + "\n  ".join(unmarked))


def _audit(event, args):
    """Notes every Snakemake process a test starts (fixtures included)."""
    if event == "subprocess.Popen" and _current["item"] is not None:
        argv = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        if any("snakemake" in os.path.basename(str(a)) for a in argv[:3]):
            _current["spawned"].append(" ".join(map(str, argv[:4])))


sys.addaudithook(_audit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    _current.update(item=item, spawned=[])
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield
    spawned, _current["item"] = _current["spawned"], None
    if spawned and not item.get_closest_marker("slow"):
        pytest.fail(f"{item.nodeid} runs Snakemake ({spawned[0]} …) but is not marked slow",
                    pytrace=False)
