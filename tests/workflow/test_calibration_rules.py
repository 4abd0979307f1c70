"""The rules pass calibration inputs only to the entries that need them (a Snakemake dry run)."""

import json
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from pipeline_run import REPO

from whisper_ptq import steps
from whisper_ptq.config import load_study


@pytest.mark.slow  # runs Snakemake (a dry run)
def test_rules_pass_calibration_only_where_needed(random_model_dir, tmp_path):
    """Dry run (config.yaml + the offline overlay, which calibrates on 16 test-clean
    utterances): the static entry's quantize job reads the calibration split's cache; every
    entry's transcribe job on that split excludes the calibration utterances."""
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
         str(tmp_path), "--configfile", str(REPO / "config.yaml"),
         str(REPO / "examples/offline-mini.yaml"), "-n", "-p", "--config",
         f"model={random_model_dir}", "librispeech_url=file:///nonexistent", "devices=cpu",
         "only=fp32,quanto-int8,quanto-int8-a8-static"],
        capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    tag = random_model_dir.name
    quantize = {}
    for m in re.finditer(r"whisper_ptq\.cli quantize .*", out.stdout):
        argv = shlex.split(m.group(0))
        spec = json.loads(argv[argv.index("--spec") + 1])
        quantize[spec["entry"]] = (argv, spec)
    argv, spec = quantize["quanto-int8-a8-static"]
    assert argv[argv.index("--calib-features") + 1] == f"data/features/{tag}/test-clean.safetensors"
    assert spec["calibration"] == {"split": "test-clean", "n": 16}
    for name in ("quanto-int8", "fp32"):
        argv, spec = quantize[name]
        assert spec["calibration"] is None and not any(a.startswith("--calib") for a in argv)
    # transcribe jobs are planned once the features checkpoint has run (shards): their
    # exclusion is the Study's, which the rule's spec passes as calib_n
    assert "cli transcribe" not in out.stdout
    study = load_study(REPO / "config.yaml", {
        **yaml.safe_load((REPO / "examples/offline-mini.yaml").read_text()),
        "model": str(random_model_dir), "devices": "cpu"})
    assert [study.calibration_excluded(s) for s in ("test-clean", "test-other")] == [16, 0]
    wc = {"model": tag, "entry": "fp32", "device": "cpu", "shard": "0", "nshards": "1"}
    assert [steps.spec(study, "transcribe", {**wc, "split": s})["calib_n"]
            for s in ("test-clean", "test-other")] == [16, 0]
