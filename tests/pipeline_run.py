"""Run the real Snakemake pipeline on a small real study, in a temporary copy of the workflow.

Used by test_pipeline, test_reruns, test_resume, test_provenance, test_shards_run and
test_slurm. The copy (Snakefile,
workflow/, envs/, profiles/, a `slurm` link) is its own git repository so provenance records a
commit, and nothing a test touches (a library module's mtime) affects the checkout or the
other engineers' runs. The small study: real tiny.en weights, real LibriSpeech mini
test-clean via file://, CPU, 2 utterances, 1 thread, three entries of two libraries.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

ENTRIES = {
    "fp32": {"library": "fp", "scheme": "fp32"},
    "torch-int8-dyn": {"library": "torch", "scheme": "int8-dynamic", "granularity": "per-tensor"},
    "torch-int8-pc": {"library": "torch", "scheme": "int8-dynamic", "granularity": "per-channel"},
}

_CACHE: dict = {}


def copy_workflow(dest: Path) -> Path:
    """A self-contained copy of the workflow (a git repo with one commit) at ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "Snakefile", dest / "Snakefile")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("workflow", "envs", "profiles"):
        shutil.copytree(REPO / d, dest / d, ignore=skip)
    (dest / "slurm").symlink_to("profiles/slurm")
    git = ["git", "-C", str(dest), "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "workflow copy"], check=True)
    return dest


def small_config(model_dir, mini_dir, **overrides) -> dict:
    """config.yaml of the checkout with the small study's keys (and ``overrides``)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    # batch 1: a run cut into shards of 1 (test_slurm) has the same batches; dynamic int8
    # scales activations per batch, so its hypotheses depend on which utterances share one
    config.update(model=str(model_dir), librispeech_url=f"file://{mini_dir}",
                  splits=["test-clean"], devices=["cpu"], limit=2, threads=1, only=None,
                  entries=copy.deepcopy(ENTRIES),
                  decoding={**config["decoding"], "batch_size": 1})
    config.update(overrides)
    return config


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e.pop("SNAKEMAKE_PROFILE", None)
    return e


def snakemake_cmd(wf: Path, workdir: Path, *args) -> list[str]:
    return [SNAKEMAKE, "-s", str(wf / "Snakefile"), "--directory", str(workdir), *map(str, args)]


def snakemake(wf: Path, workdir: Path, *args, timeout=1200, check=True, cwd=None):
    proc = subprocess.run(snakemake_cmd(wf, workdir, *args), cwd=cwd or wf, env=env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(map(str, args))} failed (rc {proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


_JOB = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


def parse_jobs(output: str) -> list[tuple]:
    """(rule, entry, device, split) of every job a `snakemake -n` output lists."""
    jobs, current = [], None
    for line in output.splitlines():
        m = _JOB.match(line.strip())
        if m:
            current = {"rule": m.group(1)}
            jobs.append(current)
        elif current is not None and line.strip().startswith("wildcards:"):
            for item in line.split(":", 1)[1].split(","):
                key, _, value = item.strip().partition("=")
                current[key] = value
    return sorted((j["rule"], j.get("entry"), j.get("device"), j.get("split")) for j in jobs)


def planned_jobs(wf: Path, workdir: Path, *args) -> list[tuple]:
    """The jobs `snakemake -n` would run now (the count of each is what a re-run costs)."""
    proc = snakemake(wf, workdir, "-n", *args)
    return parse_jobs(proc.stdout + proc.stderr)


def reference_run(tmp_path_factory, model_dir, mini_dir) -> tuple[Path, Path]:
    """(workflow copy, run directory) of one complete local run of the small study.

    Made once per test session and shared; tests must not change it (dry runs only, and any
    config or mtime they edit is restored).
    """
    if "ref" not in _CACHE:
        base = tmp_path_factory.mktemp("pipeline")
        wf = copy_workflow(base / "wf")
        run = base / "run"
        write_config(run, small_config(model_dir, mini_dir))
        snakemake(wf, run, "--cores", "2")
        _CACHE["ref"] = (wf, run)
    return _CACHE["ref"]


README_ENTRIES = ("fp32", "torch-int8-dyn")
README_LIMIT = 8


def readme_args(model_dir, mini_dir, *extra) -> list[str]:
    """The README's quick mini run: config.yaml + the offline-mini overlay, 8 utterances."""
    return ["--configfile", "config.yaml", "examples/offline-mini.yaml", "--config",
            f"model={model_dir}", f"librispeech_url={mini_dir.as_uri()}",
            f"limit={README_LIMIT}", *extra]


def readme_run(tmp_path_factory, model_dir, mini_dir) -> tuple[Path, list[str], str]:
    """(workflow copy, its config arguments, the run's log) of the README's quick mini run with
    default devices, from the copy's root, for two entries over both splits. Made once per
    test session and shared (test_pipeline, test_shards_run); tests must not change it."""
    if "readme" not in _CACHE:
        from whisper_ptq.config import cuda_visible

        wf = copy_workflow(tmp_path_factory.mktemp("readme") / "wf")
        shutil.copy2(REPO / "config.yaml", wf / "config.yaml")
        shutil.copytree(REPO / "examples", wf / "examples")
        # threads=1: two jobs share the two cores (each job's start-up is one thread's work);
        # devices stay auto, which is cpu here (test_shards_run checks it where it can)
        args = readme_args(model_dir, mini_dir, f"only={','.join(README_ENTRIES)}", "threads=1",
                           *(["devices=cpu"] if cuda_visible() else []))
        proc = snakemake(wf, wf, "--cores", "2", *args)
        _CACHE["readme"] = (wf, args, proc.stdout + proc.stderr)
    return _CACHE["readme"]


def results(run: Path) -> dict:
    """{(entry, device, split): (hypotheses, WER, CER)} of a finished run."""
    import json

    out = {}
    for score in sorted(run.glob("results/*/*/*/*.score.json")):
        entry, device, split = score.parent.name, score.parent.parent.name, score.name.split(".")[0]
        hyp = score.with_name(f"{split}.hyp.jsonl")
        rows = [json.loads(line) for line in hyp.read_text().splitlines() if line.strip()]
        s = json.loads(score.read_text())
        out[(entry, device, split)] = ([(r["id"], r["hypothesis"]) for r in rows], s["wer"], s["cer"])
    return out
