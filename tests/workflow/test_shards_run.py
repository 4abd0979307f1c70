"""Shards through Snakemake: devices auto on a CPU machine (and cuda planned under the SLURM
profile); a sharded run equals an unsharded one and a killed shard is redone alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline_run import (readme_args, readme_run, results, snakemake, snakemake_cmd,
                          write_config, small_config, env)
from test_slurm import dry_run_jobs

from whisper_ptq.config import cuda_visible


@pytest.fixture(scope="module")
def default_devices_run(tmp_path_factory, tiny_en_dir, mini_dir):
    """The README command run from a workflow copy's root with default devices."""
    if cuda_visible():
        pytest.skip("this machine has CUDA: devices auto plans cuda jobs here")
    wf, _, log = readme_run(tmp_path_factory, tiny_en_dir, mini_dir)
    return wf, log


@pytest.mark.slow
def test_default_devices_on_a_cpu_machine_then_slurm_plans_cuda(default_devices_run, tiny_en_dir,
                                                                  mini_dir):
    wf, log = default_devices_run
    assert "devices: cpu (auto)" in log
    jobs = dry_run_jobs(log)
    assert {j["wildcards"].get("device") for j in jobs} - {None} == {"cpu"}
    assert {p.name for p in (wf / "results/tiny.en").iterdir()} == {"checkpoints", "cpu"}

    # the same command through the SLURM profile (a GPU-less login node): the cuda half
    proc = snakemake(wf, wf, "--profile", "slurm", "-n", "--cores", "64",
                     *readme_args(tiny_en_dir, mini_dir, "only=fp32"), cwd=wf)
    planned = dry_run_jobs(proc.stdout + proc.stderr)
    transcribe = [j for j in planned if j["rule"] == "transcribe"]
    assert {j["wildcards"]["device"] for j in transcribe} == {"cuda"}
    assert {j["wildcards"]["split"] for j in transcribe} == {"test-clean", "test-other"}
    for j in transcribe:
        res = j["resources"]
        assert res["slurm_partition"] == "gpu" and res["gpu"] == "1" and res["gpu_model"] == "h100"
        assert res["cpus_per_gpu"] == "8" and res["cpus_per_task"] == "0"
        assert res["slurm_extra"] == "--exclusive" and res["runtime"] == "240"
        assert "constraint" not in res  # the EPYC constraint is for CPU jobs only
    assert {j["rule"] for j in planned} == {"transcribe", "score", "report", "all"}

    # an explicit cuda on this machine stops before any job, with one line naming it
    bad = snakemake(wf, wf, "-n", *readme_args(tiny_en_dir, mini_dir, "only=fp32", "devices=cuda"),
                    check=False)
    out = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "rule " not in out
    assert "config 'devices' asks for cuda, but this machine has no CUDA device" in out


def transcribe_pids(run: Path) -> dict[int, list[str]]:
    out = {}
    for p in Path("/proc").iterdir():
        try:
            argv = (p / "cmdline").read_bytes().decode().split("\0")
            if "whisper_ptq.cli" in argv and "transcribe" in argv \
                    and os.readlink(p / "cwd") == str(run):
                out[int(p.name)] = argv
        except (OSError, ValueError):
            continue
    return out


def kill_during_second_shard(wf, run, timeout=600):
    """Run with one core until one shard is done and another is transcribing; SIGKILL all."""
    proc = subprocess.Popen(snakemake_cmd(wf, run, "--cores", "1"), cwd=wf, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before a second shard was caught"
            done = list(run.glob("results/*/cpu/fp32/test-clean/shard-*.timing.json"))
            for argv in transcribe_pids(run).values():
                target = run / argv[argv.index("--out-timing") + 1]
                if done and not target.exists():
                    time.sleep(1.0)  # let it get into transcription
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    return done, target
            time.sleep(0.05)
        raise AssertionError("no second shard within the timeout")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for _ in range(100):
            if not transcribe_pids(run):
                break
            time.sleep(0.1)


@pytest.mark.slow
def test_sharded_run_equals_unsharded_and_a_killed_shard_is_redone_alone(
        default_devices_run, tmp_path, tiny_en_dir, mini_dir):
    wf, _ = default_devices_run
    cfg = dict(limit=8, only=["fp32"], calibration={"split": "test-clean", "n": 16},
               decoding={"batch_size": 2, "language": "en", "task": "transcribe",
                         "max_new_tokens": 440})
    runs = {}
    for name, shard_size in (("whole", None), ("sharded", 4)):
        run = tmp_path / name
        write_config(run, small_config(tiny_en_dir, mini_dir, shard_size=shard_size, **cfg))
        # archive, model and features of the first run: this test is about transcription
        subprocess.run(["cp", "-a", str(wf / "data"), str(run / "data")], check=True)
        runs[name] = run
    snakemake(wf, runs["whole"], "--cores", "2")

    run = runs["sharded"]
    done, killed = kill_during_second_shard(wf, run)
    assert len(done) == 1 and not killed.exists()
    snakemake(wf, run, "--unlock")
    plan = dry_run_jobs(snakemake(wf, run, "-n").stdout)
    redo = [j for j in plan if j["rule"] == "transcribe"]
    assert len(redo) == 1 and f"shard-{redo[0]['wildcards']['shard']}of2" in killed.name
    assert "quantize" not in {j["rule"] for j in plan}
    snakemake(wf, run, "--cores", "2")

    got, want = results(run), results(runs["whole"])
    assert set(got) == {("fp32", "cpu", "test-clean")}
    assert got == want, "a sharded run differs from the unsharded one"
    timing = json.loads((run / "results/tiny.en/cpu/fp32/test-clean.timing.json").read_text())
    whole = json.loads((runs["whole"] / "results/tiny.en/cpu/fp32/test-clean.timing.json")
                       .read_text())
    assert timing["shards"] == 2 and whole["shards"] == 1
    assert timing["order"] == whole["order"] and len(timing["order"]) == 8
    assert timing["audio_seconds"] == pytest.approx(whole["audio_seconds"])
    assert len({s["provenance"]["hostname"] for s in timing["shard_runs"]}) == 1
    assert timing["mixed_hardware"] is None
