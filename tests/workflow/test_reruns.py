"""Exact re-runs: after each kind of edit, `snakemake -n` plans exactly the invalidated jobs.

One real local run of the small study (tests/pipeline_run.py: tiny.en, 2 real test-clean
utterances, entries fp32 / torch-int8-dyn / torch-int8-pc), then one edit per test, a dry
run, and a comparison of the planned jobs with the rule written in README ("Re-runs").
Every edit is undone afterwards; the run itself is never changed.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time

import pytest
import yaml

from pipeline_run import parse_jobs, planned_jobs, reference_run, write_config

pytestmark = pytest.mark.slow

SPLIT, DEVICE = "test-clean", "cpu"


def run_jobs(entry):
    """The quantize, transcribe and score jobs of one entry (one device, one split here)."""
    return [("quantize", entry, None, None), ("transcribe", entry, DEVICE, SPLIT),
            ("score", entry, DEVICE, SPLIT)]


REPORT = [("report", None, None, None), ("all", None, None, None)]


@pytest.fixture(scope="module")
def ref(tmp_path_factory, tiny_en_dir, mini_dir):
    return reference_run(tmp_path_factory, tiny_en_dir, mini_dir)


@contextlib.contextmanager
def edited_config(run, edit):
    """Apply ``edit(config)`` to the run's config.yaml; restore the file afterwards."""
    path = run / "config.yaml"
    original = path.read_text()
    config = yaml.safe_load(original)
    edit(config)
    try:
        write_config(run, config)
        yield config
    finally:
        path.write_text(original)


@contextlib.contextmanager
def edited(path):
    """Edit ``path`` (append a comment: new content, new mtime); restore it afterwards.

    A bare `touch` re-runs nothing: Snakemake 9 records checksums of small input files and
    skips a newer mtime when the content is unchanged (see README, "Re-runs").
    """
    st = os.stat(path)
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# edited by test_reruns\n")
        os.utime(path, (st.st_atime, time.time() + 3600))  # newer than any output
        yield
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@contextlib.contextmanager
def touched(path):
    """New mtime, same content; restored afterwards."""
    st = os.stat(path)
    try:
        os.utime(path, (st.st_atime, time.time() + 3600))  # newer than any output
        yield
    finally:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_parse_jobs_reads_dry_run_blocks():
    out = """Building DAG of jobs...
rule quantize:
    input: data/models/tiny.en
    wildcards: model=tiny.en, entry=torch-int8-dyn
    resources: tmpdir=/tmp
localrule report:
    input: a, b
localrule all:
"""
    assert parse_jobs(out) == [("all", None, None, None), ("quantize", "torch-int8-dyn", None, None),
                               ("report", None, None, None)]


def test_complete_run_plans_nothing(ref):
    wf, run = ref
    assert planned_jobs(wf, run) == []


def test_editing_one_entry_reruns_only_that_entry(ref):
    wf, run = ref

    def edit(c):
        c["entries"]["torch-int8-dyn"]["granularity"] = "per-channel"

    with edited_config(run, edit):
        assert planned_jobs(wf, run) == sorted(run_jobs("torch-int8-dyn") + REPORT)


def test_adding_an_entry_runs_only_its_jobs(ref):
    wf, run = ref

    def edit(c):
        c["entries"]["torch-int8-dyn-2"] = copy.deepcopy(c["entries"]["torch-int8-dyn"])

    with edited_config(run, edit):
        assert planned_jobs(wf, run) == sorted(run_jobs("torch-int8-dyn-2") + REPORT)


def test_removing_an_entry_reruns_only_the_report(ref):
    wf, run = ref

    with edited_config(run, lambda c: c["entries"].pop("torch-int8-pc")):
        assert planned_jobs(wf, run) == sorted(REPORT)


@pytest.mark.parametrize("key,value", [("batch_size", 8), ("max_new_tokens", 200)])
def test_shared_decoding_setting_reruns_every_transcription(ref, key, value):
    wf, run = ref

    def edit(c):
        assert c["decoding"][key] != value
        c["decoding"][key] = value

    with edited_config(run, edit) as config:
        expected = [(rule, e, DEVICE, SPLIT) for e in config["entries"]
                    for rule in ("transcribe", "score")]
        assert planned_jobs(wf, run) == sorted(expected + REPORT)


def test_threads_are_not_a_rerun_trigger(ref):
    """Thread count is a resource (recorded in provenance), not an input of any result."""
    wf, run = ref
    with edited_config(run, lambda c: c.update(threads=2)):
        assert planned_jobs(wf, run) == []


def test_editing_one_library_module_reruns_only_its_entries(ref):
    wf, run = ref
    with edited(wf / "workflow/whisper_ptq/quantizers/pytorch.py"):
        jobs = planned_jobs(wf, run)
    assert jobs == sorted(run_jobs("torch-int8-dyn") + run_jobs("torch-int8-pc") + REPORT)
    assert not [j for j in jobs if j[1] == "fp32"]


def test_editing_the_fp_module_rescores_against_the_new_baseline(ref):
    """fp32 is every entry's size baseline: its quantize re-runs all score jobs (cheap), but
    no other entry's quantize or transcribe."""
    wf, run = ref
    with edited(wf / "workflow/whisper_ptq/quantizers/fp.py"):
        jobs = planned_jobs(wf, run)
    others = [("score", e, DEVICE, SPLIT) for e in ("torch-int8-dyn", "torch-int8-pc")]
    assert jobs == sorted(run_jobs("fp32") + others + REPORT)


def test_touching_a_module_without_editing_it_reruns_nothing(ref):
    wf, run = ref
    with touched(wf / "workflow/whisper_ptq/quantizers/pytorch.py"):
        assert planned_jobs(wf, run) == []


def test_shard_size_reruns_transcription_only_where_it_cuts_differently(ref):
    """A new cut re-runs every transcription as new shard jobs (no quantize, no features); a
    size that still leaves the split one shard re-runs only the report, which records the
    run's config (results/report/config.yaml)."""
    wf, run = ref
    with edited_config(run, lambda c: c.update(shard_size=1)) as config:  # 2 utterances: 2 shards
        expected = [(rule, e, DEVICE, SPLIT) for e in config["entries"]
                    for rule in ("transcribe", "transcribe", "score")]
        assert planned_jobs(wf, run) == sorted(expected + REPORT)
    with edited_config(run, lambda c: c.update(shard_size=1000)):
        assert planned_jobs(wf, run) == sorted(REPORT)
