"""Real Snakemake runs (issue 13): a checkout path with a space works, `download` / `model`
re-run when their source's content changes (README "Re-runs"), `--config only=` is an error.

A copy of the workflow in a directory whose name has a space, a fabricated file:// mirror
(one archive of two tiny members) and a fabricated model directory: no ../shared, no torch
job. About 50 s on 2 cores (ten Snakemake invocations).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from archives import tar_gz
from pipeline_run import copy_workflow, planned_jobs, snakemake, write_config
from whisper_ptq.data import md5_of

pytestmark = pytest.mark.slow

PREFIX = "LibriSpeech/test-clean/1/2/"
TARGETS = ["data/LibriSpeech/test-clean", "data/models/m"]


def publish(mirror, flac: bytes):
    """Write the mirror's test-clean archive and its md5sum.txt line."""
    archive = tar_gz(mirror / "test-clean.tar.gz", {PREFIX + "1-2.trans.txt": b"1-2-0000 HELLO\n",
                                                    PREFIX + "1-2-0000.flac": flac})
    (mirror / "md5sum.txt").write_text(f"{md5_of(archive)}  test-clean.tar.gz\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from safetensors.numpy import save_file

    base = tmp_path_factory.mktemp("inputs")
    wf = copy_workflow(base / "check out")  # the space once broke every job's shell prefix
    mirror = base / "mirror"
    mirror.mkdir()
    publish(mirror, b"first")
    model = base / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "whisper", "d_model": 8}))
    save_file({"w": np.zeros((64, 64), np.float32)}, str(model / "model.safetensors"))
    run = base / "run dir"
    write_config(run, {"model": str(model), "librispeech_url": mirror.as_uri(),
                       "splits": ["test-clean"], "devices": ["cpu"],
                       "entries": {"fp32": {"library": "fp", "scheme": "fp32"}}})
    return wf, run, mirror, model


def test_a_checkout_path_with_a_space_runs_jobs(setup):
    wf, run, _, _ = setup
    assert " " in str(wf) and " " in str(run)
    snakemake(wf, run, "-n")  # the whole study's DAG
    snakemake(wf, run, "--cores", "1", *TARGETS)
    assert (run / "data/LibriSpeech/test-clean/1/2/1-2-0000.flac").read_bytes() == b"first"
    assert (run / "data/models/m/model.safetensors").is_file()
    assert planned_jobs(wf, run, *TARGETS) == []


def test_a_changed_source_reruns_download_and_model(setup):
    wf, run, mirror, model = setup
    if not (run / "data/models/m").is_dir():
        snakemake(wf, run, "--cores", "1", *TARGETS)
    # a corrupt FLAC replaced on the mirror, md5sum.txt updated
    publish(mirror, b"fixed")
    assert planned_jobs(wf, run, *TARGETS) == [("download", None, None, "test-clean")]
    snakemake(wf, run, "--cores", "1", *TARGETS)
    assert (run / "data/LibriSpeech/test-clean/1/2/1-2-0000.flac").read_bytes() == b"fixed"
    assert planned_jobs(wf, run, *TARGETS) == []
    # the model directory re-converted in place
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "d_model": 16}))
    assert planned_jobs(wf, run, *TARGETS) == [("model", None, None, None)]


def test_an_empty_only_on_the_command_line_is_an_error(setup):
    """`--config only=` reaches Snakemake as None (like `only: null`, every entry)."""
    wf, run, _, _ = setup
    proc = snakemake(wf, run, "-n", "--config", "only=", check=False)
    assert proc.returncode != 0
    assert "config 'only' is empty: name at least one entry" in proc.stdout + proc.stderr
    assert planned_jobs(wf, run, "--config", "only=fp32")  # a real subset still plans
