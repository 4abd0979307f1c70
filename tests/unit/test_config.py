"""Config validation: schema types, libraries, schemes, devices, model dirs, `only`."""

import copy
from pathlib import Path

import pytest

from whisper_ptq import PipelineError
from whisper_ptq.config import SWEEP_PARTS, Study, validate_schema

REPO = Path(__file__).resolve().parents[2]


def cfg(model_dir, **over):
    c = {"model": str(model_dir),
         "entries": {"fp32": {"library": "fp", "scheme": "fp32"},
                     "torch-int8-dyn": {"library": "torch", "scheme": "int8-dynamic"}}}
    c.update(over)
    return validate_schema(c)


def test_defaults_filled_and_jobs_expanded(tmp_path, random_model_dir):
    study = Study(cfg(random_model_dir, devices="cpu,cuda", limit=3))
    assert study.splits == ["test-clean", "test-other"] and study.limit == 3
    assert study.decoding == {"batch_size": 16, "language": "en", "task": "transcribe",
                              "max_new_tokens": 440}
    jobs = {(j.entry, j.device, j.split) for j in study.jobs()}
    assert ("torch-int8-dyn", "cuda", "test-clean") not in jobs
    assert ("fp32", "cuda", "test-other") in jobs and len(jobs) == 6
    [u] = study.unsupported()
    assert (u["entry"], u["device"]) == ("torch-int8-dyn", "cuda") and "CPU" in u["reason"]


def test_wrong_type_names_the_key(random_model_dir):
    with pytest.raises(PipelineError, match="limit"):
        cfg(random_model_dir, limit="twenty")
    with pytest.raises(PipelineError, match="batch_size"):
        cfg(random_model_dir, decoding={"batch_size": "big"})
    with pytest.raises(PipelineError, match="bogus"):
        cfg(random_model_dir, bogus=1)


def test_unknown_library_and_scheme(random_model_dir):
    with pytest.raises(PipelineError, match="unknown library 'onnx'"):
        Study(cfg(random_model_dir, entries={"fp32": {"library": "fp", "scheme": "fp32"},
                                             "x": {"library": "onnx", "scheme": "int8"}}))
    with pytest.raises(PipelineError, match="entry 'x': unknown scheme 'int3-dynamic'"):
        Study(cfg(random_model_dir, entries={"fp32": {"library": "fp", "scheme": "fp32"},
                                             "x": {"library": "torch", "scheme": "int3-dynamic"}}))
    with pytest.raises(PipelineError, match="option 'bits' is not known"):
        Study(cfg(random_model_dir, entries={"fp32": {"library": "fp", "scheme": "fp32"},
                                             "x": {"library": "torch", "scheme": "int8-dynamic", "bits": 4}}))


def test_library_device_combination_that_cannot_run(random_model_dir):
    entries = {"fp32": {"library": "fp", "scheme": "fp32"},
               "t": {"library": "torch", "scheme": "int8-dynamic", "devices": ["cuda"]}}
    with pytest.raises(PipelineError, match="entry 't' cannot run on cuda: .*CPU kernels only"):
        Study(cfg(random_model_dir, entries=entries))


def test_missing_model_directory(tmp_path):
    with pytest.raises(PipelineError, match=f"model directory {tmp_path}/nope does not exist"):
        Study(cfg(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="no config.json"):
        Study(cfg(tmp_path / "empty"))


def test_hub_id_is_accepted_without_network():
    study = Study(validate_schema({"model": "openai/whisper-small",
                                   "entries": {"fp32": {"library": "fp", "scheme": "fp32"}}}))
    assert study.models == {"whisper-small": "openai/whisper-small"}


def test_only_filters_and_rejects_unknown_names(random_model_dir):
    study = Study(cfg(random_model_dir, only="torch-int8-dyn", devices=["cpu"]))
    assert {j.entry for j in study.jobs()} == {"torch-int8-dyn"}
    with pytest.raises(PipelineError, match="unknown entry fp16"):
        Study(cfg(random_model_dir, only="fp32,fp16"))


def test_fp32_baseline_is_required(random_model_dir):
    with pytest.raises(PipelineError, match="fp32 baseline"):
        Study(cfg(random_model_dir, entries={"t": {"library": "torch", "scheme": "int8-dynamic"}}))


@pytest.mark.parametrize("overlay", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_example_overlays_validate_on_top_of_config_yaml(overlay, random_model_dir):
    """Every examples/*.yaml is valid over config.yaml, as its usage line runs it."""
    import yaml
    from snakemake.utils import update_config  # --configfile merges nested keys like this

    base = yaml.safe_load((REPO / "config.yaml").read_text())
    config = copy.deepcopy(base)
    update_config(config, yaml.safe_load((REPO / "examples" / overlay).read_text()))
    config.update(model=str(random_model_dir), devices="cpu")
    study = Study(validate_schema(config))
    jobs = study.jobs()
    assert {j.entry for j in jobs} >= {"fp32"} and {j.split for j in jobs} == set(study.splits)
    if study.sweep:  # every default part but the one bnb refuses
        assert sorted(study.sweep["parts"]) == sorted(p for p in SWEEP_PARTS if p != "proj_out")
    if overlay == "noise-mini.yaml":
        assert {j.entry for j in jobs} == {"fp32", "torch-int8-dyn", "hqq-int4-g64"}
        assert len(study.splits) == 7
    if overlay == "edge-cpu.yaml":  # batch 1, and each library's entries it names
        assert study.timing["regime"] == "latency"
        assert {study.entries[j.entry]["library"] for j in jobs} == {
            "fp", "torch", "torchao", "ct2", "whispercpp", "ort", "openvino"}
    if overlay == "torchao-int4-cpu.yaml":  # adds its entries to config.yaml's
        assert set(study.entries) == set(base["entries"]) | {"torchao-int4wo",
                                                             "torchao-int4wo-compiled"}


def test_entry_order_puts_the_sweep_after_its_entry(random_model_dir):
    study = Study(cfg(random_model_dir, sweep={"entry": "torch-int8-dyn",
                                                "parts": ["decoder", "encoder"]}))
    assert study.entry_order() == ["fp32", "torch-int8-dyn", "torch-int8-dyn+decoder",
                                   "torch-int8-dyn+encoder"]
