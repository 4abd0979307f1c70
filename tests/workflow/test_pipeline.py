"""The real DAG, run as a subprocess: real LibriSpeech audio, real tiny.en weights."""

import csv
import json
import sys

import pytest

from pipeline_run import README_ENTRIES, README_LIMIT, REPO, readme_run, snakemake


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_en_dir, mini_dir):
    """The README's quick mini run (shared with test_shards_run): (workflow copy, arguments)."""
    wf, args, _ = readme_run(tmp_path_factory, tiny_en_dir, mini_dir)
    return wf, args


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_real_pipeline_gives_sane_wer(run):
    workdir, _ = run
    rows = {(r["entry"], r["split"]): r for r in read_csv(workdir / "results/report/runs.csv")}
    assert set(rows) == {(e, s) for e in README_ENTRIES for s in ("test-clean", "test-other")}
    fp32, int8 = float(rows["fp32", "test-clean"]["wer"]), float(rows["torch-int8-dyn", "test-clean"]["wer"])
    assert 0 < fp32 < 30  # tiny.en on clean read speech
    assert abs(int8 - fp32) < 5
    assert float(rows["torch-int8-dyn", "test-clean"]["size_reduction"]) > 10
    assert all(int(r["utterances"]) == README_LIMIT and float(r["rtf"]) > 0 for r in rows.values())
    table = (workdir / "results/report/table1.md").read_text()
    assert "| fp32 |" in table and "WERc" in table and "WERo" in table
    cost = (workdir / "results/report/cost.md").read_text()  # the real jobs' time and memory
    assert ("| Entry | RTF c | RTF o | Enc. s | Dec. s | Peak RSS MiB | Timed peak MiB "
            "| Resident MiB | Size MB |") in cost
    # what a loop leaves resident (libraries and model) is under its peak, and above torch's
    assert all(100 < float(r["resident_rss_mb"]) <= float(r["timed_peak_rss_mb"]) + 1
               for r in rows.values())
    assert "| torch-int8-dyn |" in cost
    for name in ("table1.tex", "fig1.png", "fig1.pdf"):
        assert (workdir / "results/report" / name).stat().st_size > 0
    hyp = [json.loads(l) for l in open(workdir / "results/tiny.en/cpu/fp32/test-clean.hyp.jsonl")]
    assert len(hyp) == README_LIMIT and {"id", "reference", "hypothesis"} <= set(hyp[0])
    assert len({h["id"].split("-")[0] for h in hyp}) == README_LIMIT  # speakers round-robin


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
    wf, args = run
    dry = snakemake(wf, wf, "-n", *args)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    snakemake(wf, wf, "--lint", *args)  # fails the test on a lint warning (rc != 0)


@pytest.mark.slow
def test_bad_config_stops_before_any_job(tmp_path, tiny_en_dir, mini_dir):
    def dry_run(*config):  # the checkout's Snakefile and config.yaml, run elsewhere
        return snakemake(REPO, tmp_path, "--configfile", REPO / "config.yaml", "-n",
                         "--config", *config, check=False)

    proc = dry_run(f"model={tiny_en_dir}", "limit=many")
    assert proc.returncode != 0 and "On instance['limit']" in proc.stdout + proc.stderr
    proc = dry_run(f"model={tmp_path}/missing")
    assert proc.returncode != 0
    assert f"model directory {tmp_path}/missing does not exist" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
