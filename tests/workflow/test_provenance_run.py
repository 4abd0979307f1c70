"""A real run's score JSON carries the entry's config and both steps' provenance."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata

import pytest
import yaml

from pipeline_run import reference_run


@pytest.mark.slow
def test_score_json_carries_config_and_both_steps_provenance(tmp_path_factory, tiny_en_dir, mini_dir):
    wf, run = reference_run(tmp_path_factory, tiny_en_dir, mini_dir)
    config = yaml.safe_load((run / "config.yaml").read_text())
    commit = subprocess.run(["git", "-C", str(wf), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    for name, entry in config["entries"].items():
        score = json.loads((run / f"results/tiny.en/cpu/{name}/test-clean.score.json").read_text())
        # the config entry as validated (defaults filled), and the shared decoding settings
        assert {k: v for k, v in score["config"].items() if k in entry} == entry
        assert score["decoding"] == config["decoding"]
        q, t = score["provenance"]["quantize"], score["provenance"]["transcribe"]
        assert q["quantization_library"]["name"] == entry["library"]
        assert q["quantization_library"]["version"]
        for p in (q, t):
            assert p["python"] == platform.python_version()
            assert p["packages"]["torch"] == metadata.version("torch")
            assert p["packages"]["transformers"] == metadata.version("transformers")
            assert p["torch_threads"] == config["threads"]
            assert p["git_commit"] == commit and p["git_dirty"] is False
            assert p["slurm"] is None  # a local run
            assert p["cpu"]["model"]
        assert t["torch_threads"] == score["threads"]
