"""Log-mel feature cache: exact round trip, compact and atomic file, bad audio, selection."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from whisper_ptq import PipelineError
from whisper_ptq.features import (FeatureCache, compute_features, load_manifest, log_mel,
                                  read_flac, select, trailing_constant_start, window_batch)


def test_feature_cache_round_trip_equals_direct_extraction(fake_split_dir, random_model_dir, tmp_path):
    from transformers import WhisperFeatureExtractor

    speaker_dir = next(p for p in sorted(fake_split_dir.iterdir()) if p.is_dir())
    small = tmp_path / "split"
    import shutil
    shutil.copytree(speaker_dir, small / speaker_dir.name)
    n = compute_features(small, random_model_dir, tmp_path / "f.safetensors", tmp_path / "m.jsonl", "test-clean")
    rows = load_manifest(tmp_path / "m.jsonl")
    assert n == len(rows) == 3
    cache = FeatureCache(tmp_path / "f.safetensors")
    assert sorted(cache.keys()) == [r["id"] for r in rows]
    fe = WhisperFeatureExtractor.from_pretrained(random_model_dir)
    for r in rows:
        flac = next(small.rglob(f"{r['id']}.flac"))
        audio, sr = sf.read(flac, dtype="float32")
        direct = fe(audio, sampling_rate=sr, return_tensors="np").input_features[0]
        np.testing.assert_array_equal(cache.get(r["id"]).numpy(), direct)
        assert r["duration"] == pytest.approx(len(audio) / 16000)
        assert r["n_frames"] == 3000 and r["reference"].isupper()
    # only frames whose STFT window (400 samples, centred every 160) reaches speech are kept
    from safetensors import safe_open

    with safe_open(str(tmp_path / "f.safetensors"), "np") as f:
        kept = {r["id"]: f.get_slice(r["id"]).get_shape()[-1] for r in rows}
    for r in rows:
        assert kept[r["id"]] <= np.ceil((r["duration"] * 16000 + 200) / 160) < 3000
    padded_bytes = sum(80 * r["n_frames"] * 4 for r in rows)
    assert (tmp_path / "f.safetensors").stat().st_size < padded_bytes / 3


def bits(t):
    """A float32 tensor's bit patterns: torch.equal on these is bit-for-bit equality."""
    return torch.as_tensor(t).contiguous().view(torch.int32)


def test_trailing_constant_run_is_found_from_the_bits():
    x = np.full((4, 10), -1.25, dtype=np.float32)
    assert trailing_constant_start(x) == 0  # all constant (silence only)
    x[2, 6] = 0.5
    assert trailing_constant_start(x) == 7
    x[:, 9] = np.float32(-0.0)
    x[0, 9] = 0.0  # equal as numbers, different bits: not one constant
    assert trailing_constant_start(x) == 10
    x[:, 9] = -1.25
    x[3, 9] = np.nan
    assert trailing_constant_start(x) == 10


def test_cache_is_bit_exact_for_long_silent_and_unpadded_utterances(fake_split_dir, random_model_dir,
                                                                    tmp_path):
    """Real speech joined past 30 s, silence only, 30 s of noise (no padding), and one real
    utterance, in a plain and in a noisy split: every cached tensor equals the padded
    log-mel of the feature extractor bit for bit."""
    from transformers import WhisperFeatureExtractor

    from whisper_ptq.data import list_utterances
    from whisper_ptq.features import noise_mixer

    real = list_utterances(fake_split_dir)[:8]
    joined = np.concatenate([read_flac(u.path) for u in real])
    assert joined.size > 16000 * 31
    rng = np.random.default_rng(0)
    audio = {"7-1-0000": joined, "7-1-0001": np.zeros(16000 * 3, dtype=np.float32),
             "7-1-0002": rng.uniform(-0.5, 0.5, 16000 * 30).astype(np.float32),
             "8-1-0000": read_flac(real[0].path)}
    fe = WhisperFeatureExtractor.from_pretrained(random_model_dir)
    # noise at an SNR needs signal power: the noisy split leaves the silence out
    for name in ("test-clean", "test-clean+white20"):
        split, out = tmp_path / name / "split", tmp_path / name
        for uid, a in audio.items():
            spk, chap, _ = uid.split("-")
            if "+" in name and not a.any():
                continue
            d = split / spk / chap
            d.mkdir(parents=True, exist_ok=True)
            sf.write(d / f"{uid}.flac", a, 16000, format="FLAC")
            with open(d / f"{spk}-{chap}.trans.txt", "a") as f:
                f.write(f"{uid} WORDS\n")
        utts = list_utterances(split)
        compute_features(split, random_model_dir, out / "f.safetensors", out / "m.jsonl", name)
        cache, mixer = FeatureCache(out / "f.safetensors"), noise_mixer(name, utts)
        kept = {}
        for u in utts:
            a = read_flac(u.path)
            expected = log_mel(fe, a if mixer is None else mixer(u.id, u.speaker, a))
            got = cache.get(u.id)
            assert got.dtype == torch.float32 and torch.equal(bits(got), bits(expected)), u.id
            kept[u.id] = cache._f.get_slice(u.id).get_shape()[-1]
        rows = {r["id"]: r for r in load_manifest(out / "m.jsonl")}
        assert rows["7-1-0000"]["n_frames"] > 3000 and rows["7-1-0002"]["n_frames"] == 3000
        assert kept["7-1-0002"] == 3000  # no trailing constant run: stored whole
        assert 0 < kept["8-1-0000"] < 3000
        if "+" not in name:
            assert kept["7-1-0001"] == 0  # silence only: nothing but the constant
    assert len(kept) == 3  # the noisy split ran too


def test_cache_written_whole_by_hand_is_read_as_it_is(tmp_path):
    from safetensors.numpy import save_file

    x = np.random.default_rng(1).normal(size=(80, 3000)).astype(np.float32)
    x[:, 2000:] = -1.0
    save_file({"1-1-0000": x}, tmp_path / "f.st")
    assert torch.equal(bits(FeatureCache(tmp_path / "f.st").get("1-1-0000")), bits(x))


KILL_ON_SECOND_UTTERANCE = """
    import os, signal, sys
    import whisper_ptq.features as F
    calls, real = [], F.log_mel
    def log_mel(fe, audio):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(fe, audio)
    F.log_mel = log_mel
    F.compute_features(*sys.argv[1:4], sys.argv[4], "test-clean")
"""


def test_killed_features_step_leaves_no_output(fake_split_dir, random_model_dir, tmp_path):
    import shutil

    split = tmp_path / "split"
    speaker_dir = next(p for p in sorted(fake_split_dir.iterdir()) if p.is_dir())
    shutil.copytree(speaker_dir, split / speaker_dir.name)
    out, manifest = tmp_path / "out" / "f.safetensors", tmp_path / "out" / "m.jsonl"
    import whisper_ptq  # the package's folder, not a sys.path entry that merely ends alike

    env = {**os.environ, "PYTHONPATH": str(Path(whisper_ptq.__file__).parents[1])}
    code = textwrap.dedent(KILL_ON_SECOND_UTTERANCE)
    p = subprocess.run([sys.executable, "-c", code, str(split), str(random_model_dir), str(out),
                        str(manifest)], env=env, capture_output=True)
    assert p.returncode == -9, p.stderr.decode()[-2000:]
    left = [q.name for q in out.parent.iterdir()]
    assert len(left) == 1 and left[0].startswith(".f.safetensors.tmp-")  # killed mid-write
    # a re-run completes and clears what the killed one left
    assert compute_features(split, random_model_dir, out, manifest, "test-clean") == 3
    assert sorted(q.name for q in out.parent.iterdir()) == ["f.safetensors", "m.jsonl"]


def test_failed_features_step_leaves_no_output(fake_split_dir, random_model_dir, tmp_path, monkeypatch):
    import shutil

    import whisper_ptq.features as F

    split = tmp_path / "split"
    speaker_dir = next(p for p in sorted(fake_split_dir.iterdir()) if p.is_dir())
    shutil.copytree(speaker_dir, split / speaker_dir.name)
    flacs = sorted(split.rglob("*.flac"))
    flacs[1].write_bytes(b"not audio")
    out = tmp_path / "out"
    with pytest.raises(PipelineError, match=f"cannot decode audio file .*{flacs[1].name}"):
        F.compute_features(split, random_model_dir, out / "f.safetensors", out / "m.jsonl", "test-clean")
    assert list(out.iterdir()) == []


def test_long_utterance_is_kept_whole_not_truncated(random_model_dir):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(random_model_dir)
    rng = np.random.default_rng(0)
    assert log_mel(fe, rng.normal(0, 0.1, 16000 * 5).astype(np.float32)).shape == (80, 3000)
    assert log_mel(fe, rng.normal(0, 0.1, 16000 * 40).astype(np.float32)).shape == (80, 4000)


def test_unreadable_flac_is_named(tmp_path):
    bad = tmp_path / "1-2-0003.flac"
    bad.write_bytes(b"this is not a flac file")
    with pytest.raises(PipelineError, match=r"cannot decode audio file .*1-2-0003\.flac"):
        read_flac(bad)


def test_empty_flac_is_named(tmp_path):
    zero_bytes = tmp_path / "1-2-0004.flac"
    zero_bytes.write_bytes(b"")
    with pytest.raises(PipelineError, match=r"cannot decode audio file .*1-2-0004\.flac"):
        read_flac(zero_bytes)
    # a well-formed file with a header but no samples (libsndfile writes no 0-frame FLAC)
    no_samples = tmp_path / "1-2-0005.flac"
    sf.write(no_samples, np.zeros(0, dtype=np.float32), 16000, format="WAV")
    with pytest.raises(PipelineError, match=r"1-2-0005\.flac is empty \(0 samples\)"):
        read_flac(no_samples)


def test_wrong_sample_rate_is_named(tmp_path):
    path = tmp_path / "x.flac"
    sf.write(path, np.zeros(800, dtype=np.float32), 8000, format="FLAC")
    with pytest.raises(PipelineError, match="8000 Hz"):
        read_flac(path)


def _rows(spec):
    return [{"id": f"{s}-1-{i:04d}", "speaker": str(s), "duration": 1.0, "reference": "A",
             "n_frames": 3000} for s, k in spec for i in range(k)]


def test_limit_takes_speakers_round_robin_deterministically():
    rows = _rows([(11, 5), (22, 1), (33, 3)])
    chosen = select(rows, 4)
    assert sorted(r["speaker"] for r in chosen) == ["11", "11", "22", "33"]
    assert chosen == select(list(reversed(rows)), 4)
    assert select(rows, None) == rows and select(rows, 100) == rows


def test_exclude_is_applied_before_limit():
    rows = _rows([(11, 3), (22, 3)])
    ex = {"11-1-0000", "22-1-0000"}
    chosen = select(rows, 10, exclude=ex)
    assert len(chosen) == 4 and not ex & {r["id"] for r in chosen}


def test_empty_split_after_limit_is_a_clear_error():
    with pytest.raises(PipelineError, match="split test-other: no utterances left"):
        select(_rows([(11, 2)]), 5, exclude={"11-1-0000", "11-1-0001"}, split="test-other")
    with pytest.raises(PipelineError, match="no utterances left"):
        select([], None, split="test-clean")


def test_window_batch_covers_the_utterance_and_pads_with_its_minimum():
    feats = torch.arange(80 * 6500, dtype=torch.float32).reshape(80, 6500).numpy()
    windows = window_batch(feats)
    assert windows.shape == (3, 80, 3000)
    assert (windows[1] == feats[:, 3000:6000]).all() and (windows[2, :, 500:] == 0).all()
