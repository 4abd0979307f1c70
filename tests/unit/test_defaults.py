"""Each default is written once, in workflow/schemas/config.schema.yaml (issue 13): code
called without a config takes the schema's value, a step requires what the rules pass."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from whisper_ptq import cli, stats
from whisper_ptq.config import SCHEMA, validate_schema
from whisper_ptq.schema import schema_default, with_defaults
from whisper_ptq.decode import generation_kwargs


def test_schema_default_reads_the_schema_file():
    props = yaml.safe_load(SCHEMA.read_text())["properties"]
    assert schema_default("threads") == props["threads"]["default"]
    assert schema_default("calibration", "split") == props["calibration"]["properties"]["split"]["default"]
    # an object key: its properties' defaults, the same a validated config gets
    filled = validate_schema({"model": "openai/whisper-small",
                              "entries": {"fp32": {"library": "fp", "scheme": "fp32"}}})
    for key in ("decoding", "bootstrap", "timing", "calibration", "threads", "limit"):
        assert schema_default(key) == filled[key], key
    assert with_defaults("decoding", {"batch_size": 3}) == {**filled["decoding"], "batch_size": 3}


def test_code_called_without_a_config_takes_the_schemas_values():
    assert (stats.DEFAULT_RESAMPLES, stats.DEFAULT_SEED) == tuple(schema_default("bootstrap").values())
    decoding = schema_default("decoding")
    multilingual = SimpleNamespace(generation_config=SimpleNamespace(is_multilingual=True))
    kw = generation_kwargs(multilingual, {})
    assert (kw["max_new_tokens"], kw["language"], kw["task"]) == (
        decoding["max_new_tokens"], decoding["language"], decoding["task"])
    assert generation_kwargs(multilingual, {"max_new_tokens": 5})["max_new_tokens"] == 5


@pytest.mark.parametrize("step, spec, paths, missing", [
    ("report", {"bootstrap": {"resamples": 2000}, "unsupported": [], "sweep": None, "order": None},
     ["--scores", "s.json", "--out-csv", "a", "--out-md", "b", "--out-tex", "c"],
     "report: the spec's bootstrap has no 'seed'"),
    ("transcribe", {"split": "test-clean"}, ["--manifest", "m.jsonl"],
     "transcribe: the spec has no 'calib_n'"),
    ("quantize", {"entry": "x", "config": {}, "calibration": {"split": "dev-clean", "n": 2}},
     ["--model-dir", "m"], "quantize: no --calib-features path given"),
])
def test_a_step_requires_what_the_rules_pass_instead_of_a_second_default(step, spec, paths,
                                                                          missing, capsys):
    """Nothing read, nothing written: the spec or path at fault is named first."""
    assert cli.main([step, "--spec", json.dumps(spec), "--threads", "1", *paths]) == 1
    assert capsys.readouterr().err.strip() == f"error: {missing}"


def test_the_cli_requires_threads(capsys):
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["quantize", "--spec", "{}"])
    assert "--threads" in capsys.readouterr().err


def test_no_function_restates_a_timing_or_decoding_default():
    """decode.run once took regime="throughput", warmup_batches=1: a second copy of the
    schema's timing defaults. Functions take the config's dict and fill it from the schema."""
    import importlib
    import inspect
    import pkgutil

    import whisper_ptq

    # batch_size is also calibration's own (features.calibration_batches), not decoding's
    keys = (set(schema_default("timing")) | set(schema_default("decoding"))) - {"batch_size"}
    found = []
    for mod in pkgutil.walk_packages(whisper_ptq.__path__, "whisper_ptq."):
        module = importlib.import_module(mod.name)
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ != mod.name:
                continue
            for p in inspect.signature(fn).parameters.values():
                if p.name in keys and p.default not in (inspect.Parameter.empty, None):
                    found.append(f"{mod.name}.{name}({p.name}={p.default!r})")
    assert found == []
