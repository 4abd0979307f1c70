"""Report: score files → the tidy runs table (``runs``) → tables (``tables``: Table 1 Markdown
and LaTeX, sweep table, terminal summary) and figures (``figures``, one look: ``style``).

Every run is compared with the fp32 baseline of the same model, device and split (paired
speaker bootstrap of ΔWER / ΔCER); Table 1 shows the LibriSpeech splits, noisy derived splits
(``test-clean+white10``) go to the CSV and the noise figure. Tables and figures are drawn from
runs.csv alone, so ``replot`` redraws them from a committed runs.csv.
"""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_path
from ..stats import DEFAULT_RESAMPLES, DEFAULT_SEED, split_difference
from . import figures, tables
from .figures import pareto_front
from .runs import (BASELINE, CSV_FIELDS, add_statistics, load_scores, read_runs, row_from_score,
                   unsupported_rows, write_csv)
from .tables import MARK

__all__ = ["build", "replot", "draw", "read_runs", "load_scores", "add_statistics",
           "degradation", "pareto_front", "row_from_score", "CSV_FIELDS", "MARK", "BASELINE"]


def _write(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def degradation(rows: list[dict], scores: dict, *, n_resamples=DEFAULT_RESAMPLES,
                seed=DEFAULT_SEED):
    """(model, device, entry, WER test-other − WER test-clean, interval) per entry that has
    both splits: an unpaired speaker bootstrap (the splits have disjoint speakers)."""
    out = []
    for (m, d, e, split), clean in scores.items():
        other = scores.get((m, d, e, "test-other"))
        if split == "test-clean" and other is not None:
            iv = split_difference(clean, other, n_resamples=n_resamples, seed=seed)
            out.append((m, d, e, other.wer - clean.wer, iv))
    return out


def draw(df, *, md=None, tex=None, png=None, pdf=None, main_png=None, pareto=None,
         noise_png=None, sweep=None, sweep_md=None, sweep_png=None, summary=None, cost_md=None,
         notes=()):
    """Every table and figure from the runs table ``df`` (``read_runs``); None skips one.
    ``pareto`` maps device → png path; ``sweep`` is ``Study.sweep``."""
    for path, text in ((md, lambda: tables.markdown_table(df, notes)),
                       (tex, lambda: tables.latex_table(df)),
                       (summary, lambda: tables.summary(df)),
                       (cost_md, lambda: tables.cost_markdown(df))):
        if path is not None:
            _write(path, text())
    if main_png is not None:
        figures.main_figure(df, main_png)
    if png is not None:
        figures.fig1(df, png, pdf)
    for device, path in (pareto or {}).items():
        figures.pareto(df, device, path)
    if noise_png is not None:
        figures.noise(df, noise_png)
    if sweep and sweep_md is not None:
        _write(sweep_md, tables.sweep_markdown(df, sweep["entry"], tables.sweep_matrix(df, sweep)))
    if sweep and sweep_png is not None:
        figures.sweep(df, sweep, sweep_png)


def build(score_paths, unsupported: list[dict], out_csv, out_md, out_tex, out_png, out_pdf, *,
          pareto: dict | None = None, noise_png=None, n_resamples: int = DEFAULT_RESAMPLES,
          seed: int = DEFAULT_SEED, sweep: dict | None = None, sweep_md=None, sweep_png=None,
          order: list[str] | None = None, main_png=None, summary=None, cost_md=None):
    """Write every report output; ``pareto`` maps device → png path; ``sweep`` is
    ``Study.sweep`` ({"entry": name, "parts": {part: entry name}}); ``order`` lists the entry
    names in the order the tables give them (``Study.entry_order()``). Figures also get a
    PDF beside their PNG. Returns the runs table (a DataFrame)."""
    scores, rows = load_scores(score_paths)
    rows += unsupported_rows(unsupported)
    rank = {name: i for i, name in enumerate(order or ())}  # unlisted entries: last, by name
    rows.sort(key=lambda r: (r["model"], r["device"], rank.get(r["entry"], len(rank)),
                             r["entry"], r["split"] or ""))
    swept = {e: sweep["entry"] for e in sweep["parts"].values()} if sweep else {}
    for r in rows:
        r["sweep_of"] = swept.get(r["entry"], "")
    notes = add_statistics(rows, scores, n_resamples=n_resamples, seed=seed)
    write_csv(rows, out_csv)
    df = read_runs(out_csv)  # what replot reads: build and replot draw the same figures
    draw(df, md=out_md, tex=out_tex, png=out_png, pdf=out_pdf, main_png=main_png, pareto=pareto,
         noise_png=noise_png, sweep=sweep, sweep_md=sweep_md, sweep_png=sweep_png,
         summary=summary, cost_md=cost_md, notes=notes)
    return df


def replot(runs_csv, out_dir) -> list[Path]:
    """Redraw the figures (and the cost and sweep tables) of a runs.csv into ``out_dir``:
    fig1, the main figure, one Pareto plot per device, cost.md, noise.png when the runs have
    noisy splits, sweep.png/.md when they have sweep entries. Returns the PNG paths written."""
    df = read_runs(runs_csv)
    out = Path(out_dir)
    ok = df[df["status"] == "ok"]
    sweep = tables.sweep_of_runs(df)
    pareto = {d: out / f"pareto_{d}.png" for d in sorted(set(ok["device"]))}
    noise_png = out / "noise.png" if (ok["noise"] != "").any() else None
    fig1 = {"test-clean", "test-other"} <= set(ok["split"])
    kw = dict(png=out / "fig1.png" if fig1 else None, main_png=out / "dwer.png", pareto=pareto,
              noise_png=noise_png, cost_md=out / "cost.md")
    if sweep:
        kw.update(sweep=sweep, sweep_png=out / "sweep.png", sweep_md=out / "sweep.md")
    draw(df, **kw)
    return [p for p in (kw["main_png"], kw["png"], *pareto.values(), noise_png,
                        kw.get("sweep_png")) if p is not None]
