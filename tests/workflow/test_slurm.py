"""`snakemake --profile slurm`: profile resolution, plugin resources, and a real SLURM run.

* From the repository root, `--profile slurm` resolves (./slurm -> profiles/slurm), plans the
  cuda half under `devices: auto` on this GPU-less machine, and gives each job what
  snakemake-executor-plugin-slurm needs: cpus_per_task, the CPU partition and the EPYC
  constraint (cuda transcriptions: tests/workflow/test_shards_run.py, once the features checkpoint ran).
* On a real single-node SLURM (slurmctld + slurmd + slurmdbd on localhost, started by
  scripts/start-slurm.sh; Debian's slurm-wlm), the small real study runs through a variant
  of the profile that only swaps partition, account and the first status-check delay; sacct
  lists its jobs COMPLETED, every result records the SLURM job that produced it, and the
  hypotheses and WER/CER equal a local run's.

Needs root and apt-get (or the packages installed): skips otherwise. CI (root, Debian) runs it.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess

import pytest
import yaml

from pipeline_run import (REPO, SNAKEMAKE, copy_workflow, env, reference_run, results, small_config,
                          snakemake, write_config)

SLURM_ENTRIES = ["fp32"]  # a job goes through SLURM the same way whatever its entry
LOCAL_RULES = {"download", "model", "score", "report", "all"}  # the Snakefile's localrules


def dry_run_jobs(output: str) -> list[dict]:
    """rule, wildcards and resources of every job in `snakemake -n` output."""
    jobs, cur = [], None
    for line in output.splitlines():
        s = line.strip()
        m = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", s)
        if m:
            cur = {"rule": m.group(1), "wildcards": {}, "resources": {}}
            jobs.append(cur)
        elif cur is not None and s.startswith(("wildcards:", "resources:")):
            key = "wildcards" if s.startswith("wildcards:") else "resources"
            for item in s.split(":", 1)[1].split(", "):
                k, _, v = item.strip().partition("=")
                cur[key][k] = v
    return jobs


@pytest.mark.slow  # runs Snakemake
def test_profile_slurm_resolves_from_repo_root(tmp_path, tiny_en_dir, mini_dir):
    wf = copy_workflow(tmp_path / "wf")
    # run where a user would: the repository root, with the study's config.yaml there
    write_config(wf, small_config(tiny_en_dir, mini_dir, devices="auto", threads=8))
    # a dry run caps threads at --cores (1 by default); a real SLURM run does not cap them
    proc = subprocess.run([SNAKEMAKE, "--profile", "slurm", "-n", "--forceall", "--cores", "64"],
                          cwd=wf, env=env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # with profiles/default beside the Snakefile Snakemake says "Using profiles slurm and ..."
    assert re.search(r"Using profiles? slurm\b", out) and "devices: cpu, cuda (auto)" in out
    jobs = dry_run_jobs(out)
    # transcribe shards are planned once the features checkpoint has run; the score jobs
    # that gather them are planned now, for both devices
    assert {j["wildcards"]["device"] for j in jobs if j["rule"] == "score"} == {"cpu", "cuda"}
    remote = [j for j in jobs if j["rule"] not in LOCAL_RULES]
    assert {j["rule"] for j in remote} == {"features", "quantize"}
    for j in remote:
        res = j["resources"]
        assert res.get("runtime") and res.get("mem_mb"), j
        assert res["slurm_partition"] == "cpu" and res["constraint"] == "epyc", j
        assert res.get("gpu", "0") == "0", j
        if j["rule"] == "quantize":
            assert res["cpus_per_task"] == "8", j


def test_plugin_turns_the_resources_into_the_right_cpu_flags():
    """The jobstep plugin's own rule: cpus_per_task wins when set, 0 leaves cpus_per_gpu."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting

    class Res(dict):
        __getattr__ = dict.__getitem__

    gpu_job = SimpleNamespace(threads=8, resources=Res(gpu=1, cpus_per_gpu=8, cpus_per_task=0))
    cpu_job = SimpleNamespace(threads=8, resources=Res(gpu=0, cpus_per_gpu=0, cpus_per_task=8))
    assert get_cpu_setting(gpu_job, True) == "--cpus-per-gpu=8"
    assert get_cpu_setting(cpu_job, False) == "--cpus-per-task=8"


# --- a real SLURM ----------------------------------------------------------------------------

def _running() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
        acc = subprocess.run(["sacctmgr", "-n", "-P", "list", "account", "testacct", "format=account"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc") \
        and acc.stdout.strip() == "testacct"


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory, site_slurm_conf):
    if os.geteuid() != 0:
        pytest.skip("a local SLURM needs root (scripts/start-slurm.sh)")
    if _running():
        yield
        return
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        pytest.skip("neither apt-get nor slurm-wlm available")
    base = os.environ.get("SLURM_BASE") or str(tmp_path_factory.mktemp("slurm"))
    start = subprocess.run([str(REPO / "scripts/start-slurm.sh")], env={**os.environ, "SLURM_BASE": base},
                           capture_output=True, text=True, timeout=600)
    if start.returncode == 3:  # apt-get missing and packages not installed
        pytest.skip(start.stderr.strip())
    assert start.returncode == 0, f"scripts/start-slurm.sh failed:\n{start.stdout}\n{start.stderr}"
    try:
        yield
    finally:
        subprocess.run([str(REPO / "scripts/stop-slurm.sh")], env={**os.environ, "SLURM_BASE": base},
                       capture_output=True, timeout=120)


def test_profile_variant(tmp_path):
    """The test profile differs from profiles/slurm only in partition, account, init delay."""
    prof = local_variant(REPO / "profiles/slurm/config.yaml", tmp_path)
    a = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    b = yaml.safe_load(prof.joinpath("config.yaml").read_text())
    diff = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
    assert diff <= {"default-resources", "set-resources", "slurm-init-seconds-before-status-checks"}
    da, db = a["default-resources"], b["default-resources"]
    assert {k for k in set(da) | set(db) if da.get(k) != db.get(k)} == {
        "slurm_partition", "slurm_account", "constraint"}
    assert "constraint" not in db
    assert b["set-resources"]["transcribe"]["slurm_partition"] == "debug"
    assert set(b["set-resources"]["transcribe"]) == {"slurm_partition", "gpu_model"}


def local_variant(profile_yaml, dest):
    """profiles/slurm with the local cluster's partition (debug), account (testacct), neither
    node constraint nor --exclusive (the one local node has no features and runs several jobs
    at once), and `slurm-init-seconds-before-status-checks: 2` (otherwise each job waits 40 s)."""
    prof = yaml.safe_load(profile_yaml.read_text())
    prof = copy.deepcopy(prof)
    prof["default-resources"]["slurm_partition"] = "debug"
    prof["default-resources"]["slurm_account"] = "testacct"
    prof["default-resources"].pop("constraint", None)
    for rule in prof.get("set-resources", {}).values():
        if "slurm_partition" in rule:
            rule["slurm_partition"] = "debug"
        rule.pop("constraint", None)
        rule.pop("slurm_extra", None)
    prof["slurm-init-seconds-before-status-checks"] = 2
    out = dest / "slurm-local"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return out


@pytest.mark.slurm
@pytest.mark.slow
def test_small_study_through_slurm_equals_local_run(slurm_cluster, tmp_path_factory, tmp_path,
                                                    tiny_en_dir, mini_dir):
    wf, ref_run = reference_run(tmp_path_factory, tiny_en_dir, mini_dir)
    run = tmp_path / "run"
    config = yaml.safe_load((ref_run / "config.yaml").read_text())
    config.update(only=SLURM_ENTRIES, shard_size=1)  # 2 utterances: 2 shards per entry
    write_config(run, config)
    planned = [j["rule"] for j in dry_run_jobs(snakemake(wf, run, "-n").stdout)]
    # the transcribe shards are planned after the features checkpoint has run
    n = len(SLURM_ENTRIES)
    assert sorted(r for r in planned if r not in LOCAL_RULES) == ["features"] + ["quantize"] * n
    remote = ["features"] + ["quantize"] * n + ["transcribe"] * 2 * n

    profile = local_variant(wf / "profiles/slurm/config.yaml", tmp_path)
    proc = snakemake(wf, run, "--profile", profile, timeout=1500)
    log = proc.stdout + proc.stderr
    m = re.search(r"SLURM run ID: ([0-9a-f-]+)", log)
    assert m, log[-3000:]

    sacct = subprocess.run(["sacct", "-X", "--parsable2", "--noheader", "--name", m.group(1),
                            "--starttime", "now-1days", "--format=JobIDRaw,State,Partition,Account"],
                           capture_output=True, text=True, timeout=60)
    assert sacct.returncode == 0, sacct.stderr
    rows = [line.split("|") for line in sacct.stdout.split()]
    assert len(rows) == len(remote), f"sacct lists {len(rows)} jobs of this run, {len(remote)} expected"
    assert {(r[1], r[2], r[3]) for r in rows} == {("COMPLETED", "debug", "testacct")}
    slurm_ids = {r[0] for r in rows}

    # every result names the SLURM job that produced it, and the jobs differ
    import json

    produced = []
    for entry in SLURM_ENTRIES:
        score = json.loads((run / f"results/tiny.en/cpu/{entry}/test-clean.score.json").read_text())
        for step in ("quantize", "transcribe"):
            slurm = score["provenance"][step]["slurm"]
            assert slurm["job_id"] in slurm_ids and slurm["partition"] == "debug"
            produced.append(slurm["job_id"])
    assert len(set(produced)) == len(produced)

    # the same hypotheses, WER and CER as the local run
    got, want = results(run), results(ref_run)
    assert set(got) == {(e, "cpu", "test-clean") for e in SLURM_ENTRIES}
    for key, value in got.items():
        assert value == want[key], f"{key}: the SLURM run differs from the local run"
