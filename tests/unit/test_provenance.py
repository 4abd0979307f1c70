"""Every result records what produced it: versions, CPU/GPU, threads, git commit, entry, SLURM job.

quantize writes provenance into quant.json (and the checkpoint's <entry>.json), transcribe
into the timing JSON, and score carries both, with the entry's config and the decoding
settings, into the score JSON.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata


from pipeline_run import REPO
from whisper_ptq import provenance

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 avx512_vnni sha_ni
processor\t: 1
model name\t: something else
flags\t\t: fpu
"""
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes
Model\t\t: Raspberry Pi 5
"""


def test_cpu_info_reads_model_and_relevant_flags():
    info = provenance.cpu_info(X86)
    assert info["model"] == "AMD EPYC 9654 96-Core Processor"
    assert info["flags"] == ["avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]
    arm = provenance.cpu_info(ARM)
    assert arm["model"] == "Raspberry Pi 5" and arm["flags"] == ["asimd"]


def test_cpu_info_of_this_machine():
    info = provenance.cpu_info()
    assert info["logical_cpus"] == os.cpu_count()
    if os.path.exists("/proc/cpuinfo") and "model name" in open("/proc/cpuinfo").read():
        assert info["model"] and info["model"] in open("/proc/cpuinfo").read()


def test_slurm_info_only_inside_a_job():
    assert provenance.slurm_info({}) is None
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_PARTITION": "gpu", "SLURM_CLUSTER_NAME": "hpc",
           "SLURM_GPUS_ON_NODE": "1"}
    assert provenance.slurm_info(env) == {"job_id": "4242", "partition": "gpu", "cluster": "hpc",
                                          "gpus": "1"}


def test_library_info_names_the_distribution_and_its_version():
    from whisper_ptq.quantizers import LIBRARIES, get

    # the distribution is a fact of the library's class
    expected = {"fp": "torch", "torch": "torch", "quanto": "optimum-quanto", "hqq": "hqq",
                "bnb": "bitsandbytes", "ct2": "ctranslate2", "torchao": "torchao",
                "whispercpp": "pywhispercpp", "ort": "onnxruntime",
                "openvino": "openvino"}
    assert {library: get(library).package for library in LIBRARIES} == expected
    for library, package in expected.items():
        info = provenance.library_info(library, get(library).package)
        assert info == {"name": library, "package": package, "version": metadata.version(package)}
        assert package in provenance.PACKAGES  # every library's version is recorded too
    assert provenance.library_info(None, None) is None


def test_collect_in_this_process(monkeypatch):
    import torch

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    prov = provenance.collect(3, library="torch", package="torch")
    assert prov["python"] == platform.python_version()
    assert prov["packages"]["torch"] == metadata.version("torch")
    assert prov["packages"]["transformers"] == metadata.version("transformers")
    assert prov["quantization_library"]["version"] == metadata.version("torch")
    assert prov["torch_threads"] == 3
    assert prov["slurm"] is None and prov["slurm_job_id"] is None
    if not torch.cuda.is_available():
        assert prov["gpu"] is None and prov["gpu_info"] is None
    else:
        assert prov["gpu"] == torch.cuda.get_device_name(0) and prov["gpu_info"]["driver"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert prov["git_commit"] == head.stdout.strip()
        assert isinstance(prov["git_dirty"], bool)


def test_quantize_records_provenance_in_both_metadata_files(random_model_dir, tmp_path):
    """Mechanics on a tiny random model: the CLI step as the quantize rule runs it."""
    entry = {"library": "torch", "scheme": "int8-dynamic", "granularity": "per-tensor"}
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "SLURM_JOB_ID": "777",
           "SLURM_JOB_PARTITION": "debug", "SLURM_CLUSTER_NAME": "localcluster"}
    proc = subprocess.run(
        [sys.executable, "-m", "whisper_ptq.cli", "quantize", "--spec",
         json.dumps({"entry": "t8", "config": entry, "calibration": None}), "--threads", "2",
         "--model-dir", str(random_model_dir), "--out-checkpoint", str(tmp_path / "t8"),
         "--out-meta", str(tmp_path / "t8.json")],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "t8.json").read_text())
    inner = json.loads((tmp_path / "t8" / "quant.json").read_text())
    prov = meta["provenance"]
    assert inner["provenance"] == prov
    assert meta["config"] == entry
    assert prov["quantization_library"] == {"name": "torch", "package": "torch",
                                            "version": metadata.version("torch")}
    assert prov["torch_threads"] == 2
    assert prov["slurm_job_id"] == "777"
    assert prov["slurm"] == {"job_id": "777", "partition": "debug", "cluster": "localcluster"}
    assert prov["cpu"]["logical_cpus"] == os.cpu_count()
