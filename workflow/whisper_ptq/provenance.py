"""What produced a result: software versions, hardware, threads, git commit, SLURM job.

``collect()`` is recorded by every step that produces a measured result: ``quantize``
(in ``quant.json`` and the checkpoint's ``<entry>.json``) and ``transcribe`` (in the
timing JSON); ``score`` carries both, with the entry's config, into the score JSON.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "accelerate", "optimum-quanto", "hqq", "bitsandbytes",
            "ctranslate2", "torchao", "pywhispercpp", "onnxruntime", "openvino", "nncf",
            "safetensors", "numpy", "jiwer", "whisper-normalizer", "snakemake")

# CPU features that decide which int8 / bf16 kernels the libraries can use
CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile", "neon", "asimd")

SLURM_VARS = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID",
              "array_task_id": "SLURM_ARRAY_TASK_ID", "cluster": "SLURM_CLUSTER_NAME",
              "partition": "SLURM_JOB_PARTITION", "account": "SLURM_JOB_ACCOUNT",
              "nodelist": "SLURM_JOB_NODELIST", "cpus_per_task": "SLURM_CPUS_PER_TASK",
              "gpus": "SLURM_GPUS_ON_NODE"}


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def cpu_info(cpuinfo: str | None = None) -> dict:
    """CPU model, core count and the SIMD flags that matter here (from /proc/cpuinfo)."""
    info = {"machine": platform.machine(), "model": platform.processor() or None,
            "logical_cpus": os.cpu_count(), "flags": []}
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return info
    model_seen = flags_seen = False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model") and not model_seen:
            info["model"], model_seen = value.strip(), True
        elif key in ("flags", "Features") and not flags_seen:
            present = set(value.split())
            info["flags"], flags_seen = [f for f in CPU_FLAGS if f in present], True
    return info


def _git(args, cwd) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(path=None) -> dict:
    """Commit of the checkout this package runs from, and whether tracked files differ."""
    cwd = path or Path(__file__).parent
    commit = _git(["rev-parse", "HEAD"], cwd)
    if not commit:
        return {"git_commit": None, "git_dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def git_commit(path=None) -> str | None:
    return git_state(path)["git_commit"]


def slurm_info(environ=None) -> dict | None:
    """The SLURM job this runs in (None outside SLURM)."""
    env = os.environ if environ is None else environ
    if not env.get("SLURM_JOB_ID"):
        return None
    return {key: env.get(var) for key, var in SLURM_VARS.items() if env.get(var) is not None}


def gpu_info() -> dict | None:
    """Name, CUDA runtime and driver of the visible GPU (None without one)."""
    import torch

    if not torch.cuda.is_available():
        return None
    info = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda, "driver": None}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["driver"] = out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def library_info(library: str | None, package: str | None) -> dict | None:
    """A config `library:` value with the distribution (its Quantizer's ``package``) and the
    version that implement it."""
    if library is None:
        return None
    return {"name": library, "package": package, "version": _version(package)}


def collect(threads: int | None = None, *, library: str | None = None,
            package: str | None = None) -> dict:
    """Provenance of the current process: recorded next to every measured result;
    ``library``/``package``: the quantization library that made it (quantize step)."""
    import torch

    gpu = gpu_info()
    slurm = slurm_info()
    prov = {
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "quantization_library": library_info(library, package),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        **git_state(),
        "slurm_job_id": slurm["job_id"] if slurm else None,
        "slurm": slurm,
        "loadavg": _loadavg(),
        "gpu": gpu["name"] if gpu else None,
        "gpu_info": gpu,
    }
    if gpu:  # flat keys kept for the report
        prov["cuda"] = gpu["cuda"]
        prov["gpu_driver"] = gpu["driver"]
    return prov


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None
