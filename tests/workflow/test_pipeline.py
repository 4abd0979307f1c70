"""The real DAG, run as a subprocess: real LibriSpeech audio, real tiny.en weights."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
LIMIT = 6


def snakemake(workdir, *args, config=()):
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(REPO / "config.yaml"), *args]
    if config:
        cmd += ["--config", *config]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_en_dir, mini_dir):
    workdir = tmp_path_factory.mktemp("pipeline")
    # threads=1: two jobs share the two cores (each job's start-up is one thread's work);
    # with threads=2 the transcribe jobs ran one at a time
    config = [f"model={tiny_en_dir}", f"librispeech_url={mini_dir.as_uri()}", "devices=cpu",
              f"limit={LIMIT}", "threads=1", "only=fp32,torch-int8-dyn"]
    proc = snakemake(workdir, "--cores", "2", config=config)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, config


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_real_pipeline_gives_sane_wer(run):
    workdir, _ = run
    rows = {(r["entry"], r["split"]): r for r in read_csv(workdir / "results/report/runs.csv")}
    assert set(rows) == {(e, s) for e in ("fp32", "torch-int8-dyn") for s in ("test-clean", "test-other")}
    fp32, int8 = float(rows["fp32", "test-clean"]["wer"]), float(rows["torch-int8-dyn", "test-clean"]["wer"])
    assert 0 < fp32 < 30  # tiny.en on clean read speech
    assert abs(int8 - fp32) < 5
    assert float(rows["torch-int8-dyn", "test-clean"]["size_reduction"]) > 10
    assert all(int(r["utterances"]) == LIMIT and float(r["rtf"]) > 0 for r in rows.values())
    table = (workdir / "results/report/table1.md").read_text()
    assert "| fp32 |" in table and "WERc" in table and "WERo" in table
    for name in ("table1.tex", "fig1.png", "fig1.pdf"):
        assert (workdir / "results/report" / name).stat().st_size > 0
    hyp = [json.loads(l) for l in open(workdir / "results/tiny.en/cpu/fp32/test-clean.hyp.jsonl")]
    assert len(hyp) == LIMIT and {"id", "reference", "hypothesis"} <= set(hyp[0])
    assert len({h["id"].split("-")[0] for h in hyp}) == LIMIT  # speakers round-robin


@pytest.mark.slow
def test_fp32_wer_equals_a_bare_generate_loop(run, tiny_en_dir):
    """An independent greedy loop (no pipeline code) over the same utterances."""
    sys.path.insert(0, str(REPO / "scripts"))
    from bare_wer import bare_wer

    workdir, _ = run
    hyp = [json.loads(l) for l in open(workdir / "results/tiny.en/cpu/fp32/test-clean.hyp.jsonl")]
    score = json.loads((workdir / "results/tiny.en/cpu/fp32/test-clean.score.json").read_text())
    bare = bare_wer(tiny_en_dir, workdir / "data/LibriSpeech/test-clean", [h["id"] for h in hyp])
    assert abs(bare - score["wer"]) <= 0.05, (bare, score["wer"])


@pytest.mark.slow
def test_second_run_has_nothing_to_do_and_lint_is_clean(run):
    workdir, config = run
    dry = snakemake(workdir, "-n", config=config)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    lint = snakemake(workdir, "--lint", config=config)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.slow
def test_bad_config_stops_before_any_job(tmp_path, tiny_en_dir, mini_dir):
    proc = snakemake(tmp_path, "-n", config=[f"model={tiny_en_dir}", "limit=many"])
    assert proc.returncode != 0 and "On instance['limit']" in proc.stdout + proc.stderr
    proc = snakemake(tmp_path, "-n", config=[f"model={tmp_path}/missing"])
    assert proc.returncode != 0
    assert f"model directory {tmp_path}/missing does not exist" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
