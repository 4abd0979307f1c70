"""Calibration plumbing: which utterances calibrate, and that they are never scored."""

import json

import numpy as np
import pytest

from whisper_ptq import PipelineError, cli
from whisper_ptq.config import Study, validate_schema
from whisper_ptq.features import calibration_ids, select
from whisper_ptq.io import read_json, read_jsonl, write_jsonl

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def rows(n, speakers=4):
    return [{"id": f"{s}-7-{i:04d}", "speaker": str(s), "duration": 3.0, "reference": "A",
             "n_frames": 3000} for s in range(1, speakers + 1) for i in range(n // speakers)]


def test_calibration_ids_are_a_fixed_choice_disjoint_from_the_scored_ones():
    manifest = rows(40)
    ids = calibration_ids(manifest, 8)
    assert len(ids) == len(set(ids)) == 8 and set(ids) <= {r["id"] for r in manifest}
    assert calibration_ids(list(reversed(manifest)), 8) == ids  # order of the cache is irrelevant
    assert len({i.split("-")[0] for i in ids}) > 1  # not one speaker's first utterances
    for limit in (None, 5, 31, 32):
        scored = select(manifest, limit, exclude=ids)
        assert not {r["id"] for r in scored} & set(ids)
        assert len(scored) == (32 if limit is None else limit)  # excluded before the limit
    with pytest.raises(PipelineError, match="would leave none to score"):
        calibration_ids(manifest, 40)
    with pytest.raises(PipelineError, match="at least 1"):
        calibration_ids(manifest, 0)


def test_config_key_defaults_and_which_split_excludes(random_model_dir):
    base = {"model": str(random_model_dir), "entries": {
        "fp32": {"library": "fp", "scheme": "fp32"},
        "s": {"library": "quanto", "scheme": "int8-a8-static"}}}
    study = Study(validate_schema(dict(base)))
    # the default calibrates on dev-clean, which is not scored: no test utterance is lost
    assert study.calibration == {"split": "dev-clean", "n": 32}
    assert study.calibration_excluded("test-clean") == study.calibration_excluded("test-other") == 0
    assert study.calibration_excluded("dev-clean") == 32
    assert study.needs_calibration("s") and not study.needs_calibration("fp32")
    study = Study(validate_schema({**base, "calibration": {"split": "test-other", "n": 5}}))
    assert (study.calibration_excluded("test-clean"), study.calibration_excluded("test-other")) == (0, 5)
    with pytest.raises(PipelineError, match="calibration"):
        validate_schema({**base, "calibration": {"n": 0}})


@pytest.fixture
def feature_cache(tmp_path):
    from safetensors.numpy import save_file

    manifest = rows(8, speakers=2)
    rng = np.random.default_rng(0)
    save_file({r["id"]: rng.normal(size=(80, 3000)).astype(np.float32) for r in manifest},
              str(tmp_path / "f.safetensors"))
    write_jsonl(tmp_path / "m.jsonl", manifest)
    return tmp_path / "f.safetensors", tmp_path / "m.jsonl"


def test_cli_calibrates_on_and_excludes_the_same_utterances(random_model_dir, tmp_path,
                                                            feature_cache, monkeypatch):
    import whisper_ptq.quantizers.quanto as qq

    monkeypatch.setattr(qq, "CALIBRATION_MAX_TOKENS", 2)
    feats, manifest = feature_cache
    entry = {"library": "quanto", "scheme": "int8-a8-static", "weights": "int8",
             "activations": "int8"}
    spec = {"entry": "s", "config": entry, "calibration": {"split": "test-clean", "n": 3}}
    assert cli.main(["quantize", "--spec", json.dumps(spec), "--threads", "1", "--model-dir",
                     str(random_model_dir), "--calib-features", str(feats), "--calib-manifest",
                     str(manifest), "--out-checkpoint", str(tmp_path / "ck"), "--out-meta",
                     str(tmp_path / "ck.json")]) == 0
    meta = read_json(tmp_path / "ck.json")
    calib = meta["calibration"]["ids"]
    assert len(calib) == 3 and meta["calibration_batches"] == 1
    assert calib == calibration_ids(read_jsonl(manifest), 3)
    # the checkpoint itself says what calibrated it
    assert read_json(tmp_path / "ck" / "quant.json")["calibration"] == meta["calibration"]
    spec = {"device": "cpu", "split": "test-clean", "shard": 0, "shards": 1, "limit": None,
            "decoding": {"batch_size": 4, "max_new_tokens": 2}, "timing": {}, "calib_n": 3,
            "shard_size": 0}
    assert cli.main(["transcribe", "--spec", json.dumps(spec), "--threads", "1", "--checkpoint",
                     str(tmp_path / "ck"), "--model-dir", str(random_model_dir), "--features",
                     str(feats), "--manifest", str(manifest), "--out-hyp", str(tmp_path / "h.jsonl"),
                     "--out-timing", str(tmp_path / "t.json")]) == 0
    scored = [r["id"] for r in read_jsonl(tmp_path / "h.jsonl")]
    assert len(scored) == 5 and not set(scored) & set(calib)
