"""What produced a result: software versions, hardware, threads, git commit, SLURM job."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "optimum-quanto", "hqq", "bitsandbytes", "jiwer",
            "whisper-normalizer", "safetensors", "snakemake")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def cpu_info() -> dict:
    info = {"machine": platform.machine(), "model": platform.processor() or None, "flags": []}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not info.get("model_name"):
                info["model"] = value.strip()
            elif key == "flags" and not info["flags"]:
                wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "fma")
                info["flags"] = [f for f in value.split() if f in wanted]
    except OSError:
        pass
    return info


def git_commit(path=None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path or Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def collect(threads: int | None = None) -> dict:
    import torch

    prov = {
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "hostname": socket.gethostname(),
        "cpu": cpu_info(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "git_commit": git_commit(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "loadavg": _loadavg(),
    }
    if torch.cuda.is_available():
        prov["gpu"] = torch.cuda.get_device_name(0)
        prov["cuda"] = torch.version.cuda
        try:
            prov["gpu_driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            prov["gpu_driver"] = None
    return prov


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None
