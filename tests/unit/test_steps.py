"""The step boundary (issue 13): a rule passes its job's spec once, and a step run from that
spec and the job's named paths, without Snakemake, writes what the rule writes.

Unit tests use a fabricated model directory (no ../shared, no torch). The slow one dry-runs
Snakemake on the shared reference run (tests/pipeline_run.py) for the jobs' commands, then
runs four of its steps in-process: about 45 s on 2 loaded cores once the reference run exists.
"""

from __future__ import annotations

import json
import re
import shlex

import numpy as np
import pytest
from safetensors.numpy import save_file
from snakemake.rules import Rule

from pipeline_run import REPO
from whisper_ptq import PipelineError, cli, steps
from whisper_ptq.config import Study
from whisper_ptq.data import md5_of

RULES = ("download", "model", "features", "quantize", "transcribe", "score", "report")


def rule_bodies() -> dict[str, str]:
    out = {}
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        blocks = re.split(r"^(?:rule|checkpoint) (\w+):\s*$", smk.read_text(), flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2]):
            out[name] = re.split(r"^\S", body, maxsplit=1, flags=re.M)[0]
    return out


def test_every_rule_runs_its_step_with_its_spec_as_its_only_param():
    bodies = rule_bodies()
    assert set(bodies) == set(RULES) == set(steps.STEPS)
    for name, body in bodies.items():
        params = re.search(r"^    params:\n((?:        .*\n|\s*\n)+?)    \w+:", body, flags=re.M)
        lines = [ln.strip() for ln in params.group(1).splitlines()
                 if ln.strip() and not ln.strip().startswith("#")]
        assert lines == [f'**step("{name}"),'], f"rule {name}: params {lines}"
        assert re.search(r"^    shell:\n        STEP\n", body, flags=re.M), f"rule {name}"


def test_the_spec_is_what_the_params_trigger_sees_and_the_paths_are_not():
    """Snakemake's own test of a param: one taking input/output is derived from paths, and
    its params trigger leaves it out (persistence: job.non_derived_params)."""
    params = steps.rule_params(None, "transcribe")
    assert set(params) == {"spec", "args"}
    assert not Rule._is_deriving_function(params["spec"])
    assert Rule._is_deriving_function(params["args"])


@pytest.fixture
def study(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "whisper", "d_model": 8}))
    save_file({"w": np.zeros((4, 4), np.float32)}, str(model / "model.safetensors"))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "test-clean.tar.gz").write_bytes(b"archive")
    (mirror / "md5sum.txt").write_text(f"{md5_of(mirror / 'test-clean.tar.gz')}  test-clean.tar.gz\n")

    def make(**overrides):
        return Study({"model": str(model), "librispeech_url": mirror.as_uri(), "devices": "cpu",
                      "splits": ["test-clean", "test-other"], "shard_size": 50,
                      "entries": {"fp32": {"library": "fp", "scheme": "fp32"},
                                  "q8": {"library": "quanto", "scheme": "int8-a8-static",
                                         "weights": "int8", "activations": "int8"}},
                      "calibration": {"split": "test-clean", "n": 4}, **overrides}, cuda=False)
    make.mirror = mirror
    return make


WILDCARDS = {"model": "m", "entry": "q8", "device": "cpu", "split": "test-clean",
             "shard": "1", "nshards": "3"}


def rule_spec(study, rule):
    """The spec as the step receives it: the rule's params JSON, parsed."""
    return json.loads(steps.rule_params(study, rule)["spec"](WILDCARDS))


def all_specs(study):
    return {rule: steps.spec(study, rule, WILDCARDS) for rule in RULES}


def test_specs_change_exactly_where_a_result_would(study):
    base = all_specs(study())
    # the mirror's archive replaced, md5sum.txt updated: the download's spec only
    mirror = study.mirror / "test-clean.tar.gz"
    assert base["download"]["md5"] == md5_of(mirror)
    mirror.write_bytes(b"fixed")
    (study.mirror / "md5sum.txt").write_text(f"{md5_of(mirror)}  test-clean.tar.gz\n")
    assert {r for r, s in all_specs(study()).items() if s != base[r]} == {"download"}
    base = all_specs(study())
    # threads changes no result (README, "Re-runs"): in no spec
    assert all_specs(study(threads=7)) == base
    changed = {r for r, s in all_specs(study(decoding={"batch_size": 3})).items() if s != base[r]}
    assert changed == {"transcribe", "report"}
    changed = {r for r, s in all_specs(study(calibration={"split": "test-clean", "n": 5})).items()
               if s != base[r]}
    assert changed == {"quantize", "transcribe", "report"}  # the calibrated entry, the split
    assert base["quantize"]["calibration"] == {"split": "test-clean", "n": 4}
    assert base["transcribe"] | {"decoding": None, "timing": None} == {
        "device": "cpu", "split": "test-clean", "shard": 1, "shards": 3, "limit": None,
        "calib_n": 4, "shard_size": 50, "decoding": None, "timing": None}
    # one shard covers the split whatever shard_size is: its spec does not carry it
    one = steps.spec(study(), "transcribe", {**WILDCARDS, "shard": "0", "nshards": "1"})
    assert one["shard_size"] == steps.spec(study(shard_size=9), "transcribe",
                                           {**WILDCARDS, "shard": "0", "nshards": "1"})["shard_size"]
    assert "threads" not in base["report"]["config"] and base["report"]["config"]["limit"] is None


def test_the_recorded_config_keeps_the_entries_order(study):
    """The report's spec reaches the step as sorted JSON; the config.yaml it records beside the
    report lists the entries in the run's order again, which is Table 1's."""
    entries = {name: {"library": "fp", "scheme": "fp32"} for name in ("fp32", "z", "b")}
    sent = rule_spec(study(entries=entries), "report")
    assert list(sent["config"]["entries"]) == ["b", "fp32", "z"]  # what the step receives
    recorded = steps.recorded_config(sent)
    assert list(recorded["entries"]) == ["fp32", "z", "b"]
    assert recorded == sent["config"]


def test_paths_round_trip_through_the_command_line():
    input = {"model_dir": "data/models/with space", "hyps": ["a.jsonl", "b.jsonl"], "one": ["x"],
             "none": []}
    output = {"split_dir": "out dir/", "pareto_cpu": "p.png"}
    words = shlex.split(steps.path_args(input, output))
    assert words[:3] == ["--model-dir", "data/models/with space", "--hyps"]
    assert "--out-pareto-cpu" in words
    assert steps.parse_paths(words) == ({**input, "one": "x"}, output)
    with pytest.raises(PipelineError, match="given twice"):
        steps.parse_paths(["--hyps", "a", "--hyps", "b"])
    with pytest.raises(PipelineError, match="before any"):
        steps.parse_paths(["a"])


def test_a_missing_path_or_spec_key_is_one_error_line(tmp_path, capsys):
    assert cli.main(["model", "--spec", '{"source": "x"}', "--threads", "1"]) == 1
    assert capsys.readouterr().err == "error: model: no --out-model-dir path given\n"
    assert cli.main(["score", "--spec", "[]", "--threads", "1"]) == 1
    assert capsys.readouterr().err == "error: --spec must be a JSON object\n"
    (tmp_path / "spec.json").write_text("{}")
    assert cli.main(["features", "--spec", f"@{tmp_path / 'spec.json'}", "--threads", "1",
                     "--split-dir", "s", "--model-dir", "m", "--out-tensors", "t",
                     "--out-manifest", "x"]) == 1
    assert capsys.readouterr().err == "error: features: the spec has no 'split'\n"


# --- a step from the job's command, without Snakemake, writes what the rule wrote ---------------
