"""The benchmark scripts still run against the package: runtimes.py broke unnoticed when
save_checkpoint's dict became the QuantMeta record. Each runs here on the smallest input it
accepts; what it measures is not checked, only that it measures and pairs."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def import_benchmark(name: str):
    """A script of benchmarks/ as a module (also for tests that compare against one)."""
    sys.path.insert(0, str(BENCH))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.slow  # three entries decode two utterances three times each
def test_runtimes_pairs_each_repeat_with_fp32_in_rotated_order(random_model_dir, mini_dir,
                                                                 tmp_path):
    out = tmp_path / "runtimes.json"
    import_benchmark("runtimes").main([
        "--model", str(random_model_dir), "--archive", str(mini_dir / "test-clean.tar.gz"),
        "--utterances", "2", "--batch-size", "2", "--repeats", "2", "--threads", "1",
        "--entries", "fp32,torchao-int8wo", "--untimed", "torchao-int4wo", "--out", str(out)])
    d = json.loads(out.read_text())
    s = d["summary"]
    assert d["failed"] == {} and set(s) == {"fp32", "torchao-int8wo"}
    assert s["fp32"]["ratios_by_repeat"] == [1.0, 1.0]
    assert [r["order"] for r in d["loadavg_repeats"]] == [["fp32", "torchao-int8wo"],
                                                         ["torchao-int8wo", "fp32"]]
    ratios = [x["compute_seconds"] / f["compute_seconds"]
              for x, f in zip(d["samples"]["torchao-int8wo"], d["samples"]["fp32"])]
    assert s["torchao-int8wo"]["ratios_by_repeat"] == ratios
    assert 0 < s["torchao-int8wo"]["linear_ratio"] < 0.5  # int8 weights, from the QuantMeta
    assert set(d["untimed"]) == {"torchao-int4wo"}
    assert d["untimed"]["torchao-int4wo"]["bytes_on_disk"] > 0
    assert not out.with_suffix(".partial.json").exists()


def test_calibration_pairs_both_orders_in_each_repeat(random_model_dir, fake_mirror, tmp_path,
                                                      monkeypatch):
    calibration = import_benchmark("calibration")
    monkeypatch.setattr(calibration.qq, "CALIBRATION_MAX_TOKENS", 2)
    out = tmp_path / "calibration.json"
    calibration.main(["--model", str(random_model_dir), "--archive",
                      str(fake_mirror / "test-clean.tar.gz"), "--utterances", "3",
                      "--batch-size", "2", "--repeats", "2", "--threads", "1", "--out", str(out)])
    d = json.loads(out.read_text())
    assert d["utterances"] == 3 and d["max_new_tokens"] == 2
    assert [r["order"] for r in d["repeats"]] == [["quanto_order", "frozen_first"],
                                                 ["frozen_first", "quanto_order"]]
    assert all(r["same_model"] for r in d["repeats"])
    assert d["ratio_quanto_order_over_frozen_first"] == [
        q / f for q, f in zip(d["samples"]["quanto_order"], d["samples"]["frozen_first"])]


def test_fallback_cost_pairs_both_arms_in_each_repeat(random_model_dir, fake_mirror, tmp_path):
    out = tmp_path / "fallback.json"
    import_benchmark("fallback_cost").main([
        "--model", str(random_model_dir), "--archive", str(fake_mirror / "test-clean.tar.gz"),
        "--utterances", "3", "--batch-size", "2", "--repeats", "2", "--threads", "1",
        "--max-new-tokens", "4", "--out", str(out)])
    d = json.loads(out.read_text())
    assert d["utterances"] == 3
    assert [r["order"] for r in d["repeats"]] == [["greedy", "fallback"], ["fallback", "greedy"]]
    for key in ("decoder_seconds", "compute_seconds"):
        assert d["ratio_fallback_over_greedy"][key] == [
            f[key] / g[key] for f, g in zip(d["samples"]["fallback"], d["samples"]["greedy"])]
    # a random model's hypotheses fail the rule: sampled again, so not greedy's
    assert all(r["sampled_again"] > 0 and not r["same_hypotheses"] for r in d["repeats"])


@pytest.mark.slow  # two fresh processes decode two random utterances
def test_memory_phases_runs_each_entry_with_and_without_giving_back(random_model_dir, tmp_path):
    from safetensors.numpy import save_file

    from whisper_ptq.checkpoint import load_checkpoint, save_checkpoint
    from whisper_ptq.io import write_jsonl
    from whisper_ptq.quantizers import get

    rng = np.random.default_rng(0)
    ids = ["1-1-0000", "1-1-0001"]
    save_file({i: rng.normal(size=(80, 3000)).astype(np.float32) for i in ids}, tmp_path / "f.st")
    write_jsonl(tmp_path / "m.jsonl", [{"id": i, "speaker": "1", "duration": 10.0,
                                        "reference": "HELLO", "n_frames": 3000} for i in ids])
    ckpts = tmp_path / "checkpoints"
    for name, raw in (("fp32", {"library": "fp", "scheme": "fp32"}),
                      ("quanto-int8", {"library": "quanto", "scheme": "int8"})):
        save_checkpoint(name, get(raw["library"]).validate(name, raw), random_model_dir,
                        ckpts / name)
    bench = import_benchmark("memory_phases")
    out = tmp_path / "phases.json"
    assert bench.main(["--checkpoints", str(ckpts), "--model", str(random_model_dir),
                       "--features", str(tmp_path / "f.st"), "--manifest", str(tmp_path / "m.jsonl"),
                       "--entries", "fp32", "--utterances", "2", "--batch-size", "2",
                       "--threads", "1", "--repeats", "1", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["entry"], r["give_back_after_load"]) for r in runs] == [("fp32", False),
                                                                       ("fp32", True)]
    for r in runs:
        ph = r["phases"]
        assert ("loaded, given back" in ph) == r["give_back_after_load"]
        assert ph["imports"]["rss"] < ph["loaded"]["rss"] <= ph["loop"]["peak"]
        assert ph["after, given back"]["rss"] <= ph["loop"]["peak"] + 1
        assert len(r["texts"]) == 2 and len(r["loadavg"]) == 3
    # the model's own tensors: fp32's are its parameters (the tied head once); quanto's int8
    # linears are inside its tensor subclass, and counted there
    fp32, _ = load_checkpoint(ckpts / "fp32", random_model_dir, "cpu")
    params = {p.data_ptr(): p.nbytes for p in [*fp32.parameters(), *fp32.buffers()]}
    assert bench.tensor_mb(fp32) == pytest.approx(sum(params.values()) / 2**20)
    q8, _ = load_checkpoint(ckpts / "quanto-int8", random_model_dir, "cpu")
    assert 0.3 * bench.tensor_mb(fp32) < bench.tensor_mb(q8) < 0.9 * bench.tensor_mb(fp32)
