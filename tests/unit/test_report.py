"""Report: CSV columns, Table 1 with intervals and marks, Fig. 1, Pareto fronts, noise figure."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from whisper_ptq import PipelineError, report
from whisper_ptq.records import SCORE_TIMING, Score

OLD_COLUMNS = [
    "model", "entry", "device", "split", "status", "library", "weights", "activations",
    "act_mode", "symmetric", "granularity", "group_size", "unquantized", "wer", "cer",
    "utterances", "audio_seconds", "compute_seconds", "rtf", "rtfx", "threads", "batch_size",
    "size_reduction", "linear_size_reduction", "bytes_on_disk", "fp32_bytes_on_disk",
]


def counts(errors, n):
    errors = int(errors)
    return {"hits": n - errors, "substitutions": errors, "deletions": 0, "insertions": 0, "n": n}


def make_score(model, device, entry, split, errors, *, n=20, size=0.0, rtf=0.5, spk_prefix="s",
               hyp=None):
    """A score like the score step writes; ``errors[i]`` = word errors of utterance i
    (4 utterances per speaker)."""
    utts = []
    for i, e in enumerate(errors):
        utts.append({"id": f"{split[:6]}-{i:03d}", "speaker": f"{spk_prefix}{i // 4}",
                     "words": counts(e, n), "chars": counts(2 * e, 5 * n),
                     "ref_norm": " ".join(["w"] * n),
                     "hyp_norm": hyp(i) if hyp else " ".join(["w"] * n)})
    tot = lambda unit: {k: sum(u[unit][k] for u in utts) for k in utts[0][unit]}
    w, c = tot("words"), tot("chars")
    audio = 10.0 * len(utts)
    return Score(
        model=model, device=device, entry=entry, split=split,
        wer=100.0 * w["substitutions"] / w["n"], cer=100.0 * c["substitutions"] / c["n"],
        words=w, chars=c, utterances=utts, n_utterances=len(utts),
        audio_seconds=audio,
        compute_seconds=rtf * audio, rtf=rtf, rtfx=1 / rtf, threads=2,
        batch_size=16, shards=1, mixed_hardware=None, size_reduction=size,
        linear_size_reduction=size, bytes_on_disk=100, fp32_bytes_on_disk=100,
        facts={"weights": "int8" if entry != "fp32" else "float32", "activations": "float32",
               "act_mode": "none", "symmetric": True, "granularity": "per-tensor",
               "group_size": None, "unquantized": ["conv"]},
        config={"library": "torch"}, decoding={"batch_size": 16},
        provenance={"quantize": None,
                    "transcribe": {"git_commit": "c0ffee", "git_dirty": False, "gpu": None,
                                   "slurm_job_id": "42", "hostname": "node7",
                                   "cpu": {"model": "EPYC 9654"}, "loadavg": [1.5, 1.0, 0.5]}},
    )


def write_scores(tmp_path, scores):
    paths = []
    for s in scores:
        p = tmp_path / "results" / s.model / s.device / s.entry / f"{s.split}.score.json"
        s.write(p)
        paths.append(p)
    return paths


def outputs(tmp_path):
    d = tmp_path / "report"
    return dict(out_csv=d / "runs.csv", out_md=d / "table1.md", out_tex=d / "table1.tex",
                out_png=d / "fig1.png", out_pdf=d / "fig1.pdf")


def study(model="base", rng=None, noisy=()):
    rng = rng or np.random.default_rng(0)
    base_c = rng.integers(0, 3, 40)
    base_o = rng.integers(1, 5, 40)
    scores = [
        make_score(model, "cpu", "fp32", "test-clean", base_c),
        make_score(model, "cpu", "fp32", "test-other", base_o, spk_prefix="o"),
        # same errors on clean (Δ 0), +3 errors per utterance on other (clearly worse)
        make_score(model, "cpu", "int8", "test-clean", base_c, size=70.0, rtf=0.3),
        make_score(model, "cpu", "int8", "test-other", base_o + 3, size=70.0, rtf=0.3,
                   spk_prefix="o"),
    ]
    for split, extra in noisy:
        for entry in ("fp32", "int8"):
            scores.append(make_score(model, "cpu", entry, split, base_c + extra,
                                     size=70.0 if entry == "int8" else 0.0))
    return scores


def md_rows(text):
    """Cells of every Markdown table row (header and separator lines excluded)."""
    rows = [[c.strip() for c in l.strip().strip("|").split("|")] for l in text.splitlines()
            if l.startswith("|")]
    return [r for r in rows if not set("".join(r)) <= set(":-") and r[0] not in ("Entry", "Part")]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_build_writes_table_with_intervals_and_marks(tmp_path):
    paths = write_scores(tmp_path, study())
    out = outputs(tmp_path)
    pareto = {"cpu": tmp_path / "report" / "pareto_cpu.png"}
    report.build(paths, [{"model": "base", "entry": "bnb", "device": "cpu", "reason": "no"}],
                 **out, pareto=pareto, noise_png=tmp_path / "report" / "noise.png",
                 n_resamples=500, seed=0)
    for p in [*out.values(), *pareto.values(), tmp_path / "report" / "noise.png"]:
        assert p.stat().st_size > 0, p
    rows = read_csv(out["out_csv"])
    header = list(rows[0].keys())
    assert header[:len(OLD_COLUMNS)] == OLD_COLUMNS  # the study's columns are kept, in order
    for col in ("dwer", "dwer_lo", "dwer_hi", "no_regression", "sub", "del", "ins",
                "hallucination_rate"):
        assert col in header
    by = {(r["entry"], r["split"]): r for r in rows}
    other = by[("int8", "test-other")]
    assert float(other["dwer"]) == pytest.approx(100 * 3 * 40 / (20 * 40))
    assert float(other["dwer_lo"]) > 0 and other["dwer_significant"] == "True"
    assert float(other["no_regression"]) == 0.0
    clean = by[("int8", "test-clean")]
    assert (float(clean["dwer"]), float(clean["dwer_lo"]), float(clean["dwer_hi"])) == (0, 0, 0)
    assert clean["dwer_significant"] == "False" and float(clean["no_regression"]) == 100.0
    # where each row was measured
    assert (other["git_commit"], other["git_dirty"], other["slurm_job_id"], other["hostname"],
            other["cpu_model"], other["loadavg_1m"]) == ("c0ffee", "False", "42", "node7",
                                                         "EPYC 9654", "1.5")
    assert by[("bnb", "")]["status"].startswith("unsupported")

    md = out["out_md"].read_text()
    int8_line = next(l for l in md.splitlines() if l.startswith("| int8 "))
    assert "+0.00 [+0.00, +0.00]" in int8_line           # not marked
    assert f"+15.00{report.MARK} [" in int8_line          # marked: interval excludes 0
    assert "ΔWERc [95 % CI]" in md and "paired bootstrap over speakers" in md
    assert "500 resamples, seed 0" in md
    fp32_line = next(l for l in md.splitlines() if l.startswith("| fp32 "))
    assert "(baseline)" in fp32_line
    assert r"$^\dagger$" in out["out_tex"].read_text()


def test_fig1_interval_is_a_split_difference_bootstrap(tmp_path):
    scores = study()
    paths = write_scores(tmp_path, scores)
    loaded, rows = report.load_scores(paths)
    report.add_statistics(rows, loaded, n_resamples=200, seed=0)
    deg = report.degradation(rows, loaded, n_resamples=300, seed=0)
    assert [(m, d, e) for m, d, e, _, _ in deg] == [("base", "cpu", "fp32"), ("base", "cpu", "int8")]
    for _, _, _, value, iv in deg:
        assert iv.low <= value <= iv.high and iv.high > iv.low
        assert iv.estimate == pytest.approx(value)


def test_noisy_splits_go_to_csv_and_noise_figure_not_table1(tmp_path):
    scores = study(noisy=[("test-clean+white10", 1), ("test-clean+white0", 4)])
    paths = write_scores(tmp_path, scores)
    out = outputs(tmp_path)
    report.build(paths, [], **out, noise_png=tmp_path / "noise.png", n_resamples=200)
    rows = read_csv(out["out_csv"])
    noisy = [r for r in rows if r["noise"]]
    assert len(noisy) == 4
    assert {(r["base_split"], r["noise"], r["snr_db"]) for r in noisy} == {
        ("test-clean", "white", "10.0"), ("test-clean", "white", "0.0")}
    md = out["out_md"].read_text()
    assert "white" not in md
    assert (tmp_path / "noise.png").stat().st_size > 0


def test_two_models_are_compared(tmp_path):
    paths = write_scores(tmp_path, study("tiny.en") + study("base", np.random.default_rng(1)))
    out = outputs(tmp_path)
    report.build(paths, [], **out, n_resamples=100)
    md = out["out_md"].read_text()
    assert "### base — cpu" in md and "### tiny.en — cpu" in md
    assert "### Models compared" in md
    compared = md.split("### Models compared")[1]
    header = [c.strip() for c in compared.strip().splitlines()[0].strip("|").split("|")]
    assert header[:4] == ["Device", "Entry", "WER base", "WER tiny.en"]
    assert {r["model"] for r in read_csv(out["out_csv"])} == {"base", "tiny.en"}


def test_missing_baseline_leaves_delta_empty_with_a_note(tmp_path):
    paths = write_scores(tmp_path, [s for s in study() if s.entry != "fp32"])
    out = outputs(tmp_path)
    report.build(paths, [], **out, n_resamples=100)
    md = out["out_md"].read_text()
    assert "no fp32 baseline run" in md
    row = read_csv(out["out_csv"])[0]
    assert row["dwer"] == "" and row["no_regression"] == ""
    int8_clean = study()[2]  # the first row: (int8, test-clean)
    assert (row["entry"], row["split"]) == ("int8", "test-clean")
    assert int(row["sub"]) == int8_clean.words["substitutions"] > 0
    assert int(row["ref_words"]) == int8_clean.words["n"]
    assert row["hallucination_rate"] == "0.0"


def test_mismatched_utterances_are_a_clear_error(tmp_path):
    scores = study()
    scores[2].utterances = scores[2].utterances[:-1]
    paths = write_scores(tmp_path, scores)
    with pytest.raises(PipelineError, match="base/cpu/int8/test-clean.*different utterances"):
        report.build(paths, [], **outputs(tmp_path), n_resamples=50)
    assert not outputs(tmp_path)["out_csv"].exists()  # nothing half-written


@pytest.mark.parametrize("other_errors, noted", [(11, True), (13, False)])
def test_hallucinations_are_counted_and_noted_where_they_hold_most_errors(tmp_path, other_errors,
                                                                           noted):
    """4 of 40 hypotheses twice the reference's length, with 3 word errors each (12 in all):
    counted, and named under Table 1 when they hold at least half of the split's errors."""
    errors = [3] * 4 + [1] * other_errors + [0] * (36 - other_errors)
    scores = study()
    scores[2] = make_score("base", "cpu", "int8", "test-clean", errors, size=70.0,
                           hyp=lambda i: " ".join(["w"] * (40 if i < 4 else 20)))
    scores[0] = make_score("base", "cpu", "fp32", "test-clean", [0] * 40)
    out, summary = outputs(tmp_path), tmp_path / "summary.txt"
    report.build(write_scores(tmp_path, scores), [], **out, n_resamples=50, summary=summary)
    r = next(r for r in read_csv(out["out_csv"])
             if (r["entry"], r["split"]) == ("int8", "test-clean"))
    assert int(r["hallucinations"]) == 4 and float(r["hallucination_rate"]) == 10.0
    assert int(r["hallucination_errors"]) == 12
    note = (f"int8 on test-clean: 4 hallucinated hypotheses hold 12 of its {12 + other_errors} "
            "word errors")
    assert (f"\n- {note}" in out["out_md"].read_text()) == noted  # under Table 1
    assert (f"\nnote: {note}" in summary.read_text()) == noted  # and in the terminal


@pytest.mark.parametrize("fallbacks", [None, (0, 3)])
def test_fallback_is_noted_with_the_rows_that_kept_sampled_hypotheses(tmp_path, fallbacks):
    scores = study()
    for s in scores:
        s.fallback_utterances = None if fallbacks is None else fallbacks[s.entry == "int8"]
    out, summary = outputs(tmp_path), tmp_path / "summary.txt"
    report.build(write_scores(tmp_path, scores), [], **out, n_resamples=50, summary=summary)
    counts = {(r["entry"], r["split"]): r["fallback_utterances"] for r in read_csv(out["out_csv"])}
    table, terminal = out["out_md"].read_text(), summary.read_text()
    if fallbacks is None:
        assert set(counts.values()) == {""} and "fallback" not in table + terminal
        return
    assert counts == {("fp32", "test-clean"): "0", ("fp32", "test-other"): "0",
                      ("int8", "test-clean"): "3", ("int8", "test-other"): "3"}
    assert "\n- Decoded with temperature fallback (decoding.fallback)" in table
    for split in ("test-clean", "test-other"):
        note = f"int8 on {split}: 3 of 40 hypotheses kept from sampling."
        assert f"\n- {note}" in table and f"\nnote: {note}" in terminal
    assert "fp32 on test-clean:" not in table


def test_pareto_front():
    # (size reduction, WER): maximise x, minimise y
    pts = [(0.0, 5.0), (70.0, 5.2), (70.0, 6.0), (40.0, 7.0), (85.0, 9.0)]
    assert report.pareto_front(pts, maximize_x=True) == [0, 1, 4]
    # (RTF, WER): minimise both
    pts = [(1.0, 5.0), (0.4, 5.2), (0.5, 6.0), (0.3, 9.0), (0.3, 9.5)]
    assert report.pareto_front(pts, maximize_x=False) == [3, 1, 0]


def test_rows_follow_the_given_entry_order(tmp_path):
    scores = study()
    c, o = scores[0].utterances, scores[1].utterances
    errors = lambda utts: [u["words"]["substitutions"] for u in utts]  # noqa: E731
    for entry in ("zz-first", "aa-last"):  # order puts them against the alphabet
        scores += [make_score("base", "cpu", entry, "test-clean", errors(c)),
                   make_score("base", "cpu", entry, "test-other", errors(o), spk_prefix="o")]
    out = outputs(tmp_path)
    unsupported = [{"model": "base", "entry": "bf16", "device": "cpu", "reason": "GPU only"}]
    report.build(write_scores(tmp_path, scores), unsupported, **out, n_resamples=50,
                 order=["fp32", "bf16", "zz-first", "int8", "aa-last"])
    entries = [r[0] for r in md_rows(out["out_md"].read_text())]
    assert entries == ["fp32", "bf16", "zz-first", "int8", "aa-last"]
    csv_entries = list(dict.fromkeys(r["entry"] for r in read_csv(out["out_csv"])))
    assert csv_entries == ["fp32", "bf16", "zz-first", "int8", "aa-last"]


def test_sweep_table_and_heatmap(tmp_path):
    rng = np.random.default_rng(2)
    base_c, base_o = rng.integers(0, 3, 40), rng.integers(1, 5, 40)
    scores = [make_score("base", "cpu", "fp32", "test-clean", base_c),
              make_score("base", "cpu", "fp32", "test-other", base_o, spk_prefix="o")]
    extra = {"q+encoder": 0, "q+decoder": 2, "q": 2}
    for entry, e in extra.items():
        scores += [make_score("base", "cpu", entry, "test-clean", base_c + e, size=30.0),
                   make_score("base", "cpu", entry, "test-other", base_o + e, size=30.0,
                              spk_prefix="o")]
    sweep = {"entry": "q", "parts": {"encoder": "q+encoder", "decoder": "q+decoder"}}
    out = outputs(tmp_path)
    md, png = tmp_path / "sweep.md", tmp_path / "sweep.png"
    report.build(write_scores(tmp_path, scores), [], **out, n_resamples=200, sweep=sweep,
                 sweep_md=md, sweep_png=png)
    rows = md_rows(md.read_text())
    assert [r[0] for r in rows] == ["encoder", "decoder", "all"]
    assert rows[0][1] == "+0.00 [+0.00, +0.00]"
    assert rows[1][1] == f"+10.00{report.MARK} [+10.00, +10.00]"
    assert "n = 40 utterances per split" in md.read_text()
    assert png.stat().st_size > 0 and png.with_suffix(".pdf").stat().st_size > 0


def test_one_utterance_per_split_does_not_crash_the_figures(tmp_path):
    """limit=1: one speaker per split, so every interval is a point (rounding can put the
    estimate a hair outside it); the error bars must still draw."""
    # 3 and 7 reference words: WERs like 33.33 %, whose differences round
    scores = [make_score("base", "cpu", e, split, [err], n=n, spk_prefix=split[5])
              for e, errs in (("fp32", (1, 1)), ("int8", (2, 3))) for split, err, n in
              zip(("test-clean", "test-other"), errs, (3, 7))]
    out = outputs(tmp_path)
    report.build(write_scores(tmp_path, scores), [], **out, n_resamples=50,
                 pareto={"cpu": tmp_path / "report" / "pareto_cpu.png"})
    assert out["out_png"].stat().st_size > 0
    row = next(r for r in read_csv(out["out_csv"]) if r["entry"] == "int8")
    assert float(row["other_minus_clean_lo"]) == pytest.approx(float(row["other_minus_clean"]))


def test_latex_table_compiles(tmp_path):
    paths = write_scores(tmp_path, study("tiny_en") + study("base", np.random.default_rng(1)))
    out = outputs(tmp_path)
    report.build(paths, [{"model": "base", "entry": "bf16", "device": "cpu", "reason": "GPU"}],
                 **out, n_resamples=50)
    tex = out["out_tex"].read_text()
    lines = [l for l in tex.splitlines() if l.endswith(r"\\")]
    assert len({l.count(" & ") for l in lines}) == 1  # every row has every column
    assert r"tiny\_en --- cpu & fp32 &" in tex and r"$^\dagger$" in tex
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-recommended)")
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage[margin=1cm,"
                   "landscape]{geometry}\n\\begin{document}\\tiny\n" + tex + "\\end{document}\n")
    run = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", doc.name],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def test_terminal_summary_is_a_compact_table_1(tmp_path):
    out = outputs(tmp_path)
    summary = tmp_path / "report" / "summary.txt"
    report.build(write_scores(tmp_path, study()), [], **out, n_resamples=200, summary=summary)
    lines = summary.read_text().splitlines()
    assert lines[0] == "base — cpu"
    assert lines[1].split() == ["entry", "WERc", "ΔWERc", "[95%", "CI]", "WERo", "ΔWERo",
                                "[95%", "CI]", "RTF", "size%"]
    int8 = next(l for l in lines if l.startswith("int8"))
    assert f"+15.00{report.MARK} [" in int8 and "0.300" in int8 and "70.0" in int8


@pytest.mark.parametrize("run", ["matrix", "noise"])
def test_table1_from_a_committed_runs_csv_is_unchanged(tmp_path, run):
    """The pandas pivots give the committed reference Table 1 (written before them) byte for
    byte: cell formats, intervals, marks, row order, unsupported rows."""
    folder = Path(__file__).resolve().parents[2] / "docs/results/base-mini" / run
    df = report.read_runs(folder / "runs.csv")
    report.draw(df, md=tmp_path / "table1.md")
    assert (tmp_path / "table1.md").read_text() == (folder / "table1.md").read_text()


def test_cost_table_gives_time_memory_and_size_per_entry(tmp_path):
    """cost.md: RTF per split, encoder / decoder seconds summed over the splits, the larger
    peak RSS of the two splits' jobs (whole job, timed loop, resident after it), size on
    disk; a column no row has is left out, and a runs.csv from before these columns says so
    instead of showing empty columns."""
    scores = study()
    timing = {("fp32", "test-clean"): (30.0, 12.0, 1500.0, 1400.0, 800.0),
              ("fp32", "test-other"): (20.0, 9.5, 1700.0, 1350.0, 820.0),
              ("int8", "test-clean"): (10.0, 4.0, 900.0, 600.0, 450.0),
              ("int8", "test-other"): (8.0, 3.0, 950.0, 640.0, 440.0)}
    for s in scores:
        (s.encoder_seconds, s.decoder_seconds, s.peak_rss_mb, s.timed_peak_rss_mb,
         s.resident_rss_mb) = timing[(s.entry, s.split)]
        s.bytes_on_disk = 290_400_000 if s.entry == "fp32" else 76_400_000
    out = outputs(tmp_path)
    cost = tmp_path / "report" / "cost.md"
    report.build(write_scores(tmp_path, scores), [{"model": "base", "entry": "q4", "device": "cpu",
                                                   "split": "test-clean", "reason": "no kernels"}],
                 **out, n_resamples=200, cost_md=cost)
    text = cost.read_text()
    header = next(l for l in text.splitlines() if l.startswith("| Entry"))
    assert header == ("| Entry | RTF c | RTF o | Enc. s | Dec. s | Peak RSS MiB | Timed peak MiB "
                      "| Resident MiB | Size MB |")
    assert md_rows(text) == [
        ["fp32", "0.500", "0.500", "50.0", "21.5", "1700", "1400", "820", "290.4"],
        ["int8", "0.300", "0.300", "18.0", "7.0", "950", "640", "450", "76.4"]]
    assert "### base — cpu" in text and "p50" not in header and "(No encoder" not in text

    # replot writes it from runs.csv alone; a runs.csv from before the timing columns has
    # RTF and size only
    old = tmp_path / "old.csv"
    with open(out["out_csv"]) as f, open(old, "w", newline="") as g:
        rows = csv.DictReader(f)
        w = csv.DictWriter(g, [c for c in rows.fieldnames if c not in SCORE_TIMING],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    report.replot(old, tmp_path / "replot")
    text = (tmp_path / "replot" / "cost.md").read_text()
    assert next(l for l in text.splitlines() if l.startswith("| Entry")) == \
        "| Entry | RTF c | RTF o | Size MB |"
    assert "(No encoder / decoder split or peak memory in these rows" in text
