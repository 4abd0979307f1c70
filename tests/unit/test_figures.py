"""Report figures, checked for what needs no eyes: axis ranges not set by collapsed schemes,
sweep entries kept out of the main figures, labels that do not overlap, shared noise scale."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from test_report import make_score, write_scores

from whisper_ptq import report
from whisper_ptq.report import figures, style

LIBS = {"fp32": "fp", "torch-int8": "torch", "quanto-int8": "quanto", "hqq-int4": "hqq",
        "bnb-nf4": "bnb", "ct2-int8": "ct2", "torchao-int8": "torchao", "new-int4": "newlib",
        "hqq-int2": "hqq", "torch-int8+encoder": "torch", "torch-int8+decoder": "torch"}
COLLAPSED = "hqq-int2"
SWEEP = {"entry": "torch-int8", "parts": {"encoder": "torch-int8+encoder",
                                          "decoder": "torch-int8+decoder"}}


def score(entry, split, errors, **kw):
    s = make_score("base", "cpu", entry, split, errors, spk_prefix=split[5], **kw)
    s.facts["library"] = LIBS[entry]
    if "+" in entry:
        s.facts["parts"] = entry.split("+")[1]
    return s


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A study with a scheme collapsed on test-other (WER ≈ 5× fp32), a sweep, near-identical entries of
    seven libraries (one unknown to the colour map) and white noise at two SNRs."""
    tmp = tmp_path_factory.mktemp("figs")
    rng = np.random.default_rng(0)
    # WER about 12 % and 17 %; the others add up to 2 errors per utterance (< 4× fp32)
    base = {"test-clean": rng.integers(1, 4, 40), "test-other": rng.integers(2, 5, 40)}
    scores = []
    for i, entry in enumerate(LIBS):
        for split, errs in base.items():
            collapses = entry == COLLAPSED and split == "test-other"  # there only
            extra = 15 if collapses else (i % 3 if entry != "fp32" else 0)
            scores.append(score(entry, split, np.minimum(errs + extra, 20),
                                size=0.0 if entry == "fp32" else 70.0 + 0.1 * i,
                                rtf=0.5 if entry == "fp32" else 0.3 + 0.001 * i))
        if entry in ("fp32", "torch-int8"):
            for snr, extra in ((10, 1), (0, 4)):
                scores.append(score(entry, f"test-clean+white{snr}", base["test-clean"] + extra))
    out = tmp / "report"
    kw = dict(out_csv=out / "runs.csv", out_md=out / "table1.md", out_tex=out / "table1.tex",
              out_png=out / "fig1.png", out_pdf=out / "fig1.pdf")
    report.build(write_scores(tmp, scores), [], **kw, n_resamples=200, sweep=SWEEP,
                 order=list(LIBS))
    return report.read_runs(out / "runs.csv")


def tick_labels(ax):
    return [t.get_text() for t in ax.get_yticklabels()]


def overlapping(boxes):
    return [(a, b) for (a, b) in itertools.combinations(range(len(boxes)), 2)
            if boxes[a].overlaps(boxes[b])]


def test_main_figure_keeps_its_range_and_leaves_out_the_sweep(runs):
    fig = figures.main_figure(runs)
    axes = fig.axes
    assert [ax.get_title().split()[0] for ax in axes] == ["test-clean", "test-other"]
    labels = tick_labels(axes[0])  # shared
    assert COLLAPSED in labels and "torch-int8" in labels and "fp32" not in labels
    assert not any("+" in label for label in labels)  # sweep entries: the sweep figure
    for ax, split in zip(axes, ("test-clean", "test-other")):
        rows = runs[(runs["split"] == split) & (runs["entry"] != "fp32")
                    & (runs["sweep_of"] == "")]
        lo, hi = ax.get_xlim()
        texts = [t.get_text() for t in ax.texts]
        if split == "test-clean":  # not collapsed there: an ordinary point
            assert rows["dwer_hi"].max() <= hi and texts == []
            continue
        shown = rows[rows["entry"] != COLLAPSED]
        collapsed = rows[rows["entry"] == COLLAPSED]["dwer"].iloc[0]
        assert shown["dwer_hi"].max() <= hi < collapsed  # the collapsed entry does not set it
        assert hi < 2 * shown["dwer_hi"].max() + 1
        assert texts == [f"{collapsed:+.0f}"]  # its value, written


def test_fig1_keeps_its_range_and_intervals(runs):
    fig = figures.fig1(runs)
    ax = fig.axes[0]
    assert COLLAPSED in tick_labels(ax) and not any("+" in t for t in tick_labels(ax))
    rows = runs[(runs["split"] == "test-other") & (runs["sweep_of"] == "")]
    shown = rows[rows["entry"] != COLLAPSED]
    lo, hi = ax.get_xlim()
    assert shown["other_minus_clean_hi"].max() <= hi
    assert hi < rows.loc[rows["entry"] == COLLAPSED, "other_minus_clean"].iloc[0]
    assert len([c for c in ax.containers]) == len(shown)  # one error bar per shown entry


def test_pareto_labels_do_not_overlap_and_collapsed_is_off_the_front(runs):
    fig = figures.pareto(runs, "cpu")
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = [t for t in ax.texts if t.get_text()]
        assert len(labels) == 9  # entries without the sweep's two
        assert overlapping([style.label_box(t, renderer) for t in labels]) == []
        top = ax.get_ylim()[1]
        collapsed = [t for t in labels if "↑" in t.get_text()]
        assert len(collapsed) == 1 and collapsed[0].get_text().startswith("9 ↑")
        front = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert front and all(y < 0.9 * top for line in front for y in line.get_ydata())
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0] == "1 fp32" and not any("+" in t for t in legend)


def test_pareto_rtf_axis_turns_log_only_when_the_rtfs_span_an_order_of_magnitude(runs):
    assert figures.pareto(runs, "cpu").axes[1].get_xscale() == "linear"  # RTF 0.3–0.5
    slow = runs.copy()
    slow.loc[slow["entry"] == "torchao-int8", "compute_seconds"] *= 3 * figures.RTF_LOG_SPAN
    fig = figures.pareto(slow, "cpu")
    ax = fig.axes[1]
    assert ax.get_xscale() == "log" and "log scale" in ax.get_xlabel()
    lo, hi = ax.get_xlim()
    assert lo < 0.3 and hi > 0.9 * figures.RTF_LOG_SPAN  # every point on the axis
    fig.canvas.draw()
    shown = [t.get_text() for t in ax.get_xticklabels(minor=True) + ax.get_xticklabels()
             if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert shown and all(float(t) > 0 for t in shown)  # plain decimals, no 2×10⁻¹ labels
    assert fig.axes[0].get_xscale() == "linear"  # size reduction stays linear


def test_every_library_has_its_own_colour():
    from whisper_ptq.quantizers import LIBRARIES

    libs = list(LIBRARIES)
    assert set(style.LIBRARY_COLOURS) == set(libs)
    assert len({style.library_colour(lib) for lib in libs}) == len(libs)
    assert style.library_colour("newlib") == style.library_colour("newlib")  # stable fallback
    assert style.library_colour("newlib") in style.FALLBACK


def test_noise_panels_share_one_scale_and_clean_is_a_reference(runs, tmp_path):
    import pandas as pd

    # a second noise kind: the same rows relabelled as babble
    babble = runs[runs["noise"] == "white"].assign(
        noise="babble", split=lambda d: d["split"].str.replace("white", "babble"))
    df = pd.concat([runs, babble], ignore_index=True)
    fig = figures.noise(df)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == 2 and axes[0].get_ylim() == axes[1].get_ylim()
    for ax in axes:
        assert "clean" not in [t.get_text() for t in ax.get_xticklabels()]
        series = [line for line in ax.get_lines() if line.get_marker() in tuple("os^Dv")]
        assert [list(line.get_xdata()) for line in series] == [[0, 10], [0, 10]]  # SNRs only
        assert len([line for line in ax.get_lines() if line.get_linestyle() == ":"]) == 2


def test_sweep_cells_whose_interval_includes_zero_are_grey(runs):
    fig = figures.sweep(runs, SWEEP)
    image = fig.axes[0].get_images()[0].get_array()
    rows = report.tables.sweep_matrix(runs, SWEEP)[1][("base", "cpu")]
    splits = report.tables.split_order({"test-clean", "test-other"})
    for i, (_, cells, _) in enumerate(rows):
        for j, s in enumerate(splits):
            assert bool(np.ma.getmaskarray(image)[i, j]) == (not cells[s][3])
    assert "n = 40 utterances" in fig._suptitle.get_text()


def test_replot_from_runs_csv_draws_what_was_configured(runs, tmp_path):
    runs.to_csv(tmp_path / "runs.csv", index=False)
    written = report.replot(tmp_path / "runs.csv", tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["dwer.png", "fig1.png", "noise.png", "pareto_cpu.png", "sweep.png"]
    assert all(p.with_suffix(".pdf").stat().st_size > 0 for p in written)
    plain = runs[runs["noise"] == ""].drop(columns=["noise"])
    plain.to_csv(tmp_path / "plain.csv", index=False)
    assert "noise.png" not in [p.name for p in report.replot(tmp_path / "plain.csv", tmp_path / "p")]
