"""Kill -9 in the middle of quantize / transcribe, resume, finish with correct outputs.

* Every output is written to a temporary sibling and renamed into place (whisper_ptq.io.
  atomic_path), so a process killed mid-write leaves no file under the output's name.
* A real run of the small study is SIGKILLed (snakemake and its job, the whole process
  group, as a node failure or `scancel --signal=KILL` would) while a quantize job runs, resumed,
  SIGKILLed again while a transcribe job runs, and resumed to completion. The resume recipe
  (README, "Cluster (SLURM)" / "Re-runs"): `snakemake --unlock`, then the same command
  again; no --rerun-incomplete is needed because a killed job never leaves all its outputs.
* The finished run's hypotheses, WER/CER and checkpoint sizes equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from pipeline_run import (REPO, env, reference_run, results, snakemake, snakemake_cmd,
                          write_config)

ENTRIES = ["fp32", "torch-int8-dyn"]


# --- atomic writes, deterministic -------------------------------------------------------

def _spawn_slow_writer(target: Path, is_dir: bool):
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from whisper_ptq.io import atomic_path
        with atomic_path({str(target)!r}, is_dir={is_dir}) as tmp:
            f = open(tmp / "weights.bin" if {is_dir} else tmp, "wb")
            f.write(b"x" * 1_000_000); f.flush()
            print("writing", flush=True)
            time.sleep(60)
            f.write(b"rest"); f.close()
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "workflow")})


@pytest.mark.parametrize("is_dir", [False, True], ids=["file", "dir"])
def test_sigkill_mid_write_leaves_no_output(tmp_path, is_dir):
    target = tmp_path / ("ckpt" if is_dir else "out.json")
    proc = _spawn_slow_writer(target, is_dir)
    try:
        assert proc.stdout.readline().strip() == "writing"
        leftovers = list(tmp_path.glob(f".{target.name}.tmp-*"))
        assert leftovers, "the writer writes to a temporary sibling"
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not target.exists(), "a killed writer left a file under the output's name"


# --- kill and resume a real run -----------------------------------------------------------

@pytest.fixture(scope="module")
def ref(tmp_path_factory, tiny_en_dir, mini_dir):
    return reference_run(tmp_path_factory, tiny_en_dir, mini_dir)


def step_processes(run: Path, step: str) -> list[int]:
    """PIDs of `whisper_ptq.cli <step>` processes whose working directory is ``run``."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
            if b"whisper_ptq.cli" in argv and step.encode() in argv \
                    and os.readlink(p / "cwd") == str(run):
                pids.append(int(p.name))
        except OSError:
            continue
    return pids


def start(wf, run):
    return subprocess.Popen(snakemake_cmd(wf, run, "--cores", "1"), cwd=wf, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def kill_mid_step(wf, run, step, final_output, settle=2.0, timeout=300):
    """Run the workflow until a `step` job has run ``settle`` s without writing
    ``final_output(pid_cmdline)``, then SIGKILL the whole process group. Returns the killed
    job's command line."""
    proc = start(wf, run)
    deadline = time.monotonic() + timeout
    seen: dict[int, float] = {}
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before a {step} job was caught"
            now = time.monotonic()
            for pid in step_processes(run, step):
                seen.setdefault(pid, now)
                if now - seen[pid] < settle:
                    continue
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                if not final_output(run, argv).exists():
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    return argv
            time.sleep(0.05)
        raise AssertionError(f"no {step} job within {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        # the job is in the same process group: wait until it is gone
        for _ in range(100):
            if not step_processes(run, step):
                break
            time.sleep(0.1)


def arg(argv, flag):
    return argv[argv.index(flag) + 1]


@pytest.mark.slow  # runs Snakemake
def test_sigkill_during_quantize_and_transcribe_then_resume(ref, tmp_path):
    wf, ref_run = ref
    run = tmp_path / "run"
    config = yaml.safe_load((ref_run / "config.yaml").read_text())
    config["only"] = ENTRIES
    write_config(run, config)
    # the archive, model and features of the reference run: this test is about the steps after
    subprocess.run(["cp", "-a", str(ref_run / "data"), str(run / "data")], check=True)

    # 1. SIGKILL while quantize runs (before its metadata, its last output, exists)
    argv = kill_mid_step(wf, run, "quantize", lambda r, a: r / arg(a, "--out-meta"))
    killed_meta = run / arg(argv, "--out-meta")
    assert not killed_meta.exists()
    # a killed job never leaves its checkpoint under the final name without quant.json
    ckpt = run / arg(argv, "--out-checkpoint")
    assert not ckpt.exists() or (ckpt / "quant.json").is_file()

    # the lock of the killed snakemake stays: plain `snakemake` refuses, --unlock clears it
    locked = snakemake(wf, run, "--cores", "1", check=False)
    assert locked.returncode != 0 and "cannot be locked" in (locked.stdout + locked.stderr)
    snakemake(wf, run, "--unlock")
    plan = snakemake(wf, run, "-n").stdout
    assert str(killed_meta.relative_to(run)) in plan, "the killed quantize job is not planned again"

    # 2. resume; SIGKILL again while transcribe runs (before its timing JSON exists)
    argv = kill_mid_step(wf, run, "transcribe", lambda r, a: r / arg(a, "--out-timing"))
    assert not (run / arg(argv, "--out-timing")).exists()
    snakemake(wf, run, "--unlock")

    # 3. resume to the end: no --rerun-incomplete needed
    snakemake(wf, run, "--cores", "2")
    assert snakemake(wf, run, "-n").stdout.count("rule ") == 0

    got, want = results(run), results(ref_run)
    assert set(got) == {(e, "cpu", "test-clean") for e in ENTRIES}
    for key, value in got.items():
        assert value == want[key], f"{key}: resumed run differs from the uninterrupted one"
    for entry in ENTRIES:
        a = json.loads((run / f"results/tiny.en/checkpoints/{entry}.json").read_text())
        b = json.loads((ref_run / f"results/tiny.en/checkpoints/{entry}.json").read_text())
        assert a["bytes_on_disk"] == b["bytes_on_disk"]
        assert json.loads((run / f"results/tiny.en/checkpoints/{entry}/quant.json").read_text()) \
            ["bytes_on_disk"] == a["bytes_on_disk"]
