"""Log-mel feature cache: round trip, bad audio, utterance selection."""

import numpy as np
import pytest
import soundfile as sf

from whisper_ptq import PipelineError
from whisper_ptq.features import (FeatureCache, compute_features, load_manifest, log_mel,
                                  read_flac, select)


def test_feature_cache_round_trip_equals_direct_extraction(clean_split_dir, tiny_en_dir, tmp_path):
    from transformers import WhisperFeatureExtractor

    speaker_dir = next(p for p in sorted(clean_split_dir.iterdir()) if p.is_dir())
    small = tmp_path / "split"
    import shutil
    shutil.copytree(speaker_dir, small / speaker_dir.name)
    n = compute_features(small, tiny_en_dir, tmp_path / "f.safetensors", tmp_path / "m.jsonl", "test-clean")
    rows = load_manifest(tmp_path / "m.jsonl")
    assert n == len(rows) == 3
    cache = FeatureCache(tmp_path / "f.safetensors")
    assert sorted(cache.keys()) == [r["id"] for r in rows]
    fe = WhisperFeatureExtractor.from_pretrained(tiny_en_dir)
    for r in rows:
        flac = next(small.rglob(f"{r['id']}.flac"))
        audio, sr = sf.read(flac, dtype="float32")
        direct = fe(audio, sampling_rate=sr, return_tensors="np").input_features[0]
        np.testing.assert_array_equal(cache.get(r["id"]).numpy(), direct)
        assert r["duration"] == pytest.approx(len(audio) / 16000)
        assert r["n_frames"] == 3000 and r["reference"].isupper()


def test_long_utterance_is_kept_whole_not_truncated(tiny_en_dir):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(tiny_en_dir)
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
