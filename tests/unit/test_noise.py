"""Noisy derived splits: names, SNR accuracy, determinism, babble from other speakers."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_ptq import PipelineError
from whisper_ptq import noise


@pytest.mark.parametrize("name, parsed", [
    ("test-clean", noise.SplitName("test-clean")),
    ("test-clean+white10", noise.SplitName("test-clean", "white", 10.0)),
    ("test-other+babble-5", noise.SplitName("test-other", "babble", -5.0)),
    ("test-clean+white2.5", noise.SplitName("test-clean", "white", 2.5)),
])
def test_parse_split(name, parsed):
    assert noise.parse_split(name) == parsed
    import re
    assert re.fullmatch(noise.SPLIT_PATTERN, name)  # the Snakemake wildcard accepts it


@pytest.mark.parametrize("bad", ["test-clean+pink10", "test-clean+white", "test_clean", "x+white5"])
def test_bad_split_names_are_clear_errors(bad):
    with pytest.raises(PipelineError, match="derived"):
        noise.parse_split(bad)


def _speechlike(n, seed, f=220.0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return (0.1 * env * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("kind", noise.KINDS)
@pytest.mark.parametrize("snr", [-5.0, 0.0, 5.0, 10.0, 20.0])
def test_mixed_snr_within_a_tenth_of_a_db(kind, snr):
    pool = [(f"{s}-0-{k}", str(s), (lambda s=s, k=k: _speechlike(16000 * (2 + k), 10 * s + k,
                                                                 150 + 40 * s)))
            for s in range(4) for k in range(2)]
    mixer = noise.NoiseMixer(kind, snr, pool)
    clean = _speechlike(16000 * 3, 99)
    mixed = mixer("0-0-0", "0", clean)
    assert mixed.dtype == np.float32 and mixed.shape == clean.shape
    added = mixed.astype(np.float64) - clean
    assert abs(noise.snr_db(clean, added) - snr) < 0.1


def test_noise_is_deterministic_per_utterance_and_differs_between_utterances():
    clean = _speechlike(16000, 1)
    a = noise.NoiseMixer("white", 10)("1-2-3", "1", clean)
    b = noise.NoiseMixer("white", 10)("1-2-3", "1", clean)
    c = noise.NoiseMixer("white", 10)("1-2-4", "1", clean)
    d = noise.NoiseMixer("white", 10, seed=1)("1-2-3", "1", clean)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, d)


def test_babble_uses_other_speakers_only_and_is_independent_of_pool_order():
    pool = [(f"{s}-0-{k}", str(s), (lambda: np.ones(10, np.float32))) for s in range(5)
            for k in range(3)]
    mixer = noise.NoiseMixer("babble", 0, pool, talkers=4)
    rng = noise.utterance_rng("babble", "2-0-1")
    chosen = mixer.talkers_for("2-0-1", "2", rng)
    assert len(chosen) == 4 and all(spk != "2" for _, spk, _ in chosen)
    again = noise.NoiseMixer("babble", 0, list(reversed(pool)), talkers=4)
    assert [c[0] for c in again.talkers_for("2-0-1", "2", noise.utterance_rng("babble", "2-0-1"))] \
        == [c[0] for c in chosen]


def test_babble_is_a_sum_of_unit_rms_talkers():
    rng = np.random.default_rng(0)
    talkers = [np.full(100, 2.0, np.float32), np.full(50, -3.0, np.float32)]
    out = noise.babble(80, talkers, rng)
    np.testing.assert_allclose(out, 0.0, atol=1e-6)  # +1 and −1 after RMS normalisation
    assert out.shape == (80,)


def test_babble_without_other_speakers_is_a_clear_error():
    mixer = noise.NoiseMixer("babble", 5, [("1-0-0", "1", lambda: np.ones(5, np.float32))])
    with pytest.raises(PipelineError, match="no utterance of another speaker"):
        mixer("1-0-1", "1", _speechlike(100, 0))


def test_silent_signal_is_a_clear_error():
    with pytest.raises(PipelineError, match="silent"):
        noise.NoiseMixer("white", 5)("1-0-0", "1", np.zeros(100, np.float32))


def test_features_of_a_noisy_split_come_from_the_clean_audio(fake_split_dir, random_model_dir, tmp_path):
    import shutil

    from transformers import WhisperFeatureExtractor

    from whisper_ptq.features import FeatureCache, compute_features, load_manifest, log_mel, read_flac

    small = tmp_path / "split"
    for spk in sorted(p for p in fake_split_dir.iterdir() if p.is_dir())[:2]:
        shutil.copytree(spk, small / spk.name)
    n = compute_features(small, random_model_dir, tmp_path / "f.safetensors", tmp_path / "m.jsonl",
                         "test-clean+babble5")
    rows = load_manifest(tmp_path / "m.jsonl")
    assert n == len(rows) > 0
    assert all(r["noise"] == "babble" and r["snr_db"] == 5.0 for r in rows)
    r = rows[0]
    flac = next(small.rglob(f"{r['id']}.flac"))
    clean = read_flac(flac)
    fe = WhisperFeatureExtractor.from_pretrained(random_model_dir)
    cached = FeatureCache(tmp_path / "f.safetensors").get(r["id"]).numpy()
    assert not np.allclose(cached, log_mel(fe, clean))
    # recomputing the noisy audio by hand gives exactly the cached features
    from whisper_ptq.data import list_utterances
    from whisper_ptq.features import noise_mixer

    mixer = noise_mixer("test-clean+babble5", list_utterances(small))
    noisy = mixer(r["id"], r["speaker"], clean)
    np.testing.assert_array_equal(cached, log_mel(fe, noisy))
    assert abs(noise.snr_db(clean, noisy.astype(np.float64) - clean) - 5.0) < 0.1
