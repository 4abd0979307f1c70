import functools
import json
import shlex
import os
import sys

from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

PKG = f"{workflow.basedir}/workflow"
sys.path.insert(0, PKG)

from whisper_ptq import PipelineError, noise, quantizers, steps
from whisper_ptq.config import Job, Study, cuda_visible


def cluster_cuda_nodes():
    """The SLURM profile's site setting `cuda_nodes` (a default resource, so that it
    survives a --config on the command line, which replaces a profile's whole config: key).
    """
    res = workflow.resource_settings.default_resources
    value = res.get("cuda_nodes") if res is not None else None
    return int(value.raw) if value is not None and value.raw is not None else 0


def jobs_see_cuda():
    """Whether cuda jobs can run: inside a submitted job (it checks its own device), on a
    cluster with GPU nodes, or on this machine when it sees a CUDA device."""
    return workflow.remote_exec or cluster_cuda_nodes() > 0 or cuda_visible()


# `--config only=` arrives as None, like `only: null` (every entry): it is an empty list
if (
    "only" in workflow.config_settings.config
    and workflow.config_settings.config["only"] is None
):
    config["only"] = ""  # Study refuses it
validate(config, workflow.source_path("../schemas/config.schema.yaml"))
try:
    STUDY = Study(config, cuda=jobs_see_cuda())
except PipelineError as e:
    raise WorkflowError(f"config: {e}") from None
if not workflow.remote_exec:
    logger.info(
        f"devices: {', '.join(STUDY.devices)}"
        + (" (auto)" if config["devices"] == "auto" else "")
    )

# Every rule runs its step of whisper_ptq.steps through one command, STEP (whisper_ptq.cli),
# with `params: **step("<rule>")` (steps.rule_params): `spec`, the job's spec, what its
# result depends on and the only param Snakemake's params re-run trigger sees, and `args`,
# the step and the job's named paths. (Not `script:`: Snakemake 9 runs it with an unquoted
# interpreter path, which breaks a venv under a path with spaces; snakemake#2645.) The
# package is found through PYTHONPATH; `python` is the env's own with --use-conda, and
# otherwise the interpreter running Snakemake (the project's venv), put first on PATH for
# the jobs. Both quoted: a checkout path may hold spaces.
_PATH = ""
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    _PATH = f'export PATH={shlex.quote(os.path.dirname(sys.executable))}:"$PATH"; '
shell.prefix(f"set -euo pipefail; export PYTHONPATH={shlex.quote(PKG)}; {_PATH}")
STEP = (
    "python -m whisper_ptq.cli {params.args} --spec {params.spec:q} --threads {threads}"
    " > {log} 2>&1"
)


def step(rule):
    return steps.rule_params(STUDY, rule)


wildcard_constraints:
    model=r"[\w.-]+",
    entry=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    device="cpu|cuda",
    # a LibriSpeech split or a noisy derived one (test-clean+white10; whisper_ptq.noise)
    split=noise.SPLIT_PATTERN,
    shard=r"\d+",
    nshards=r"\d+",


def library_module(wildcards):
    library = STUDY.entries[wildcards.entry]["library"]
    return [str(p) for p in quantizers.module_paths(library)]


def score_files():
    """Score files of every selected run and of the fp32 baseline of each model/device/split
    they run on (the report's ΔWER intervals are against it, even when `only` omits fp32).
    """
    jobs = STUDY.jobs()
    baseline = [
        Job(j.model, "fp32", j.device, j.split)
        for j in jobs
        if j.device in STUDY.devices_of("fp32")
        and not STUDY.unsupported_reason("fp32", j.device)
    ]
    return list(
        dict.fromkeys(
            f"results/{j.model}/{j.device}/{j.entry}/{j.split}.score.json"
            for j in jobs + baseline
        )
    )


def report_devices():
    return sorted({j.device for j in STUDY.jobs()})


def calibration_input(wildcards):
    """The calibration split's feature cache, only for entries with static activations."""
    if not STUDY.needs_calibration(wildcards.entry):
        return {}
    split = STUDY.calibration["split"]
    return {
        "calib_features": f"data/features/{wildcards.model}/{split}.safetensors",
        "calib_manifest": f"data/features/{wildcards.model}/{split}.manifest.jsonl",
    }


@functools.lru_cache(maxsize=None)
def _utterances(manifest, mtime, limit, calib_n, split):
    from whisper_ptq.transcribe import excluded_ids
    from whisper_ptq.features import load_manifest, select

    # a count only: the length-sorted order (transcribe.ordered_rows) is the same rows
    exclude = excluded_ids(manifest, calib_n, split)
    return len(select(load_manifest(manifest), limit, exclude, split))


def shard_count(model, split):
    """Shards of a split: its utterance count is known once the features checkpoint has
    written the manifest (until then Snakemake plans up to the features jobs)."""
    from whisper_ptq.transcribe import shard_bounds

    manifest = checkpoints.features.get(model=model, split=split).output.manifest
    n = _utterances(
        manifest,
        os.path.getmtime(manifest),
        STUDY.limit,
        STUDY.calibration_excluded(split),
        split,
    )
    return len(shard_bounds(n, STUDY.shard_size))


def shard_files(wildcards, suffix):
    """One file per shard of a run (model × entry × device × split), in shard order."""
    n = shard_count(wildcards.model, wildcards.split)
    w = wildcards
    return [
        f"results/{w.model}/{w.device}/{w.entry}/{w.split}/shard-{i}of{n}{suffix}"
        for i in range(n)
    ]
