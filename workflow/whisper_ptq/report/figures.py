"""Report figures, drawn from the tidy runs table alone (``runs.read_runs``): the main figure
(ΔWER vs fp32), Fig. 1 (test-other − test-clean), Pareto plots, WER vs SNR, the sweep heatmap.
Each writes a PNG and a PDF beside it (``style.save``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import style
from .runs import BASELINE, CLEAN, OTHER, with_collapse
from .tables import KEY, MARK, SHORT, plain, pooled, split_order, sweep_matrix

RTF_LOG_SPAN = 8.0  # the Pareto RTF axis turns logarithmic when the RTFs span more than this


def _labeller(df: pd.DataFrame):
    """Entry label, with the device / model only where the figure has several."""
    many_dev, many_model = df["device"].nunique() > 1, df["model"].nunique() > 1
    return lambda m, d, e: e + (f" · {d}" if many_dev else "") + (f" [{m}]" if many_model else "")


def _errs(est, lo, hi):
    """Error-bar lengths, never negative (a one-speaker interval collapses to the estimate
    and rounding can put it a hair beyond)."""
    return np.clip(np.asarray(est) - np.asarray(lo), 0, None), np.clip(np.asarray(hi) - np.asarray(est), 0, None)


def _range(values):
    """x-range of the shown (not collapsed) values, padded, always containing 0."""
    v = np.asarray([x for x in values if np.isfinite(x)] + [0.0])
    lo, hi = v.min(), v.max()
    pad = 0.08 * (hi - lo) or 1.0
    return lo - pad, hi + pad


def forest(ax, items, xlabel):
    """Horizontal point + interval per item (first on top). ``items``: dicts with label, est,
    lo, hi (NaN: no interval), colour, sig, collapsed, value. Collapsed items do not set the
    range: a ▶ / ◀ at the edge with their value written."""
    y = np.arange(len(items))[::-1]
    shown = [(yy, it) for yy, it in zip(y, items) if not it["collapsed"]]
    lo, hi = _range([v for _, it in shown for v in (it["est"], it["lo"], it["hi"])])
    for yy, it in shown:
        face = it["colour"] if it["sig"] else "white"
        if np.isfinite(it["lo"]):
            xerr = np.array(_errs([it["est"]], [it["lo"]], [it["hi"]])).reshape(2, 1)
            ax.errorbar(it["est"], yy, xerr=xerr, fmt="none", ecolor=it["colour"], elinewidth=1,
                        capsize=2)
        ax.plot(it["est"], yy, "o", ms=4.5, mfc=face, mec=it["colour"], mew=1, zorder=3)
    span = hi - lo
    for yy, it in zip(y, items):
        if not it["collapsed"]:
            continue
        right = it["value"] >= 0
        x = hi - 0.02 * span if right else lo + 0.02 * span
        ax.plot(x, yy, ">" if right else "<", ms=6, color=it["colour"], zorder=3, clip_on=False)
        ax.annotate(f"{it['value']:+.0f}", (x, yy), xytext=(-6 if right else 6, 0),
                    textcoords="offset points", ha="right" if right else "left", va="center",
                    fontsize=6.5, color=it["colour"])
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.7, len(items) - 0.3)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_yticks(y, [it["label"] for it in items])
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", alpha=0)
    return lo, hi


def _legend_forest(fig, libraries, note):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=style.library_colour(lib), label=lib)
               for lib in dict.fromkeys(libraries)]
    handles += [Line2D([], [], ls="", marker="o", mfc="gray", mec="gray", label="CI excludes 0"),
                Line2D([], [], ls="", marker="o", mfc="white", mec="gray", label="CI includes 0"),
                Line2D([], [], ls="", marker=">", color="gray", label=note)]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 5),
               bbox_to_anchor=(0.5, 0.0), frameon=False)


def _main_entries(df):
    """ok rows of the LibriSpeech splits without the sweep entries, in the table's order."""
    rows = plain(with_collapse(df, style.COLLAPSE))
    return rows[(rows["status"] == "ok") & (rows["sweep_of"] == "")]


def main_figure(df: pd.DataFrame, png=None):
    """ΔWER against fp32 per entry with its 95 % paired speaker-bootstrap interval, one panel
    per LibriSpeech split, coloured by library; filled = significant. Sweep entries are in
    the sweep figure; fp32 is the zero line. Also written as SVG."""
    plt = style.plt()
    rows = _main_entries(df)
    rows = rows[(rows["entry"] != BASELINE) & rows["dwer"].notna()]
    splits = split_order(set(rows["split"]))
    keys = list(dict.fromkeys(map(tuple, rows[KEY].itertuples(index=False))))
    label = _labeller(rows)
    fig, axes = plt.subplots(1, max(1, len(splits)), sharey=True, squeeze=False,
                             figsize=(style.PAGE, 0.9 + 0.17 * max(len(keys), 3)))
    for ax, split in zip(axes[0], splits):
        by = rows[rows["split"] == split].set_index(KEY)
        items = []
        for k in keys:
            if k not in by.index:
                items.append(dict(label=label(*k), est=np.nan, lo=np.nan, hi=np.nan,
                                  colour="white", sig=False, collapsed=False, value=np.nan))
                continue
            r = by.loc[k]
            items.append(dict(label=label(*k), est=r["dwer"], lo=r["dwer_lo"], hi=r["dwer_hi"],
                              colour=style.library_colour(r["library"]),
                              sig=bool(r["dwer_significant"]), collapsed=bool(r["collapsed"]),
                              value=r["dwer"]))
        forest(ax, items, f"ΔWER vs fp32 (points), {split}")
        n = by["utterances"].max()
        ax.set_title(f"{split} (n = {n:.0f} utterances)" if pd.notna(n) else split)
    if not keys:
        axes[0][0].text(0.5, 0.5, "no quantized runs with an fp32 baseline", ha="center",
                        va="center", transform=axes[0][0].transAxes)
    _legend_forest(fig, rows["library"],
                   f"collapsed (WER > {style.COLLAPSE:g}× fp32): ΔWER written")
    fig.suptitle(f"ΔWER against fp32 with {style.CI_TEXT} (paired)")
    fig.tight_layout()
    return _done(fig, png, svg=True)  # the SVG opens the HTML report (workflow.rst)


def fig1(df: pd.DataFrame, png=None, pdf=None):
    """Fig. 1: WER test-other − test-clean per entry with its unpaired speaker-bootstrap
    interval; fp32's value is the dashed reference. Collapsed entries (on either split) at
    the edge with their value."""
    plt = style.plt()
    rows = _main_entries(df)
    both = rows[rows["split"].isin([CLEAN, OTHER])]
    wer = both.pivot_table(index=KEY, columns="split", values="wer", aggfunc="first", sort=False)
    keys = [k for k in dict.fromkeys(map(tuple, both[KEY].itertuples(index=False)))
            if CLEAN in wer and OTHER in wer and wer.loc[k].notna().all()]
    first = both.groupby(KEY, sort=False).agg(
        library=("library", "first"), collapsed=("collapsed", "any"),
        gap=("other_minus_clean", "first"), lo=("other_minus_clean_lo", "first"),
        hi=("other_minus_clean_hi", "first"))
    label = _labeller(both)
    items = []
    for k in keys:
        r = first.loc[k]
        est = wer.loc[k, OTHER] - wer.loc[k, CLEAN]
        items.append(dict(label=label(*k), est=est, lo=r["lo"], hi=r["hi"],
                          colour=style.library_colour(r["library"]), sig=True,
                          collapsed=bool(r["collapsed"]), value=est))
    fig, ax = plt.subplots(figsize=(style.COLUMN + 0.6, 0.9 + 0.17 * max(len(items), 3)))
    if items:
        forest(ax, items, "WER test-other − test-clean (points)")
        for k, it in zip(keys, items):
            if k[2] == BASELINE:
                ax.axvline(it["est"], color=it["colour"], lw=0.8, ls="--")
        has_ci = all(np.isfinite(it["lo"]) for it in items if not it["collapsed"])
        note = (style.CI_TEXT + ", splits resampled independently" if has_ci else
                "no intervals: runs.csv lacks other_minus_clean_lo/hi")
        ax.set_title(f"Fig. 1: WER increase on test-other\n({note}; dashed: fp32;\n"
                     f"▶ collapsed, WER > {style.COLLAPSE:g}× fp32, value written)", fontsize=7)
    else:
        ax.text(0.5, 0.5, "needs both test-clean and test-other", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    return _done(fig, png, pdf)


def pareto_front(points, maximize_x: bool) -> list[int]:
    """Indices of the non-dominated (x, wer) points, lower WER better; x is maximised
    (size reduction) or minimised (RTF). Sorted along x."""
    idx = []
    for i, (x, y) in enumerate(points):
        dominated = False
        for j, (x2, y2) in enumerate(points):
            if j == i:
                continue
            better_x = x2 >= x if maximize_x else x2 <= x
            strictly = (x2 > x if maximize_x else x2 < x) or y2 < y
            if better_x and y2 <= y and strictly:
                dominated = True
                break
        if not dominated:
            idx.append(i)
    return sorted(idx, key=lambda i: points[i][0])


def pareto_points(df: pd.DataFrame, device: str) -> pd.DataFrame:
    """Pooled points of one device without the sweep entries, numbered in table order, with
    ``collapsed`` (pooled WER > COLLAPSE × the model's fp32)."""
    p = pooled(df)
    p = p[(p["device"] == device) & (p["sweep_of"] == "")].reset_index(drop=True)
    base = p[p["entry"] == BASELINE].set_index("model")["wer"]
    p["collapsed"] = p["wer"] > style.COLLAPSE * p["model"].map(base).astype(float)
    p["number"] = np.arange(1, len(p) + 1)
    return p


def _wide(values, span: float = RTF_LOG_SPAN) -> bool:
    """Whether positive values span more than ``span``× (a linear axis would crush the rest)."""
    v = values[values > 0]
    return len(v) > 1 and v.max() / v.min() > span


def pareto(df: pd.DataFrame, device: str, png=None):
    """Size reduction vs WER and RTF vs WER, coloured by library, every point numbered (the
    legend names it); dashed + circled: the front of the non-collapsed entries; collapsed
    entries at the top edge (▲) with their WER."""
    plt = style.plt()
    p = pareto_points(df, device)
    models = list(dict.fromkeys(p["model"]))
    markers = "osD^v"
    fig, axes = plt.subplots(1, 2, figsize=(style.PAGE, max(2.8, 0.9 + 0.12 * len(p))))
    shown = p[~p["collapsed"]]
    top = (shown["wer"].max() * 1.12) if not shown.empty else 1.0
    specs = [(axes[0], "size", True, "size reduction vs fp32 (%)  →  smaller"),
             (axes[1], "rtf", False, "RTF (compute s / audio s)  ←  faster")]
    for ax, key, maximize, xlabel in specs:
        labels = []
        for mi, model in enumerate(models):
            these = p[p["model"] == model]
            ok = these[~these["collapsed"]]
            front = pareto_front(list(zip(ok[key], ok["wer"])), maximize)
            fx, fy = ok[key].to_numpy()[front], ok["wer"].to_numpy()[front]
            ax.plot(fx, fy, color="gray", lw=0.8, ls="--", zorder=1)
            ax.plot(fx, fy, "o", mfc="none", mec="black", ms=9, mew=0.6, zorder=2)
            for r in these.itertuples():
                colour = style.library_colour(r.library)
                y = top * 0.985 if r.collapsed else r.wer
                ax.plot(r._asdict()[key], y, "^" if r.collapsed else markers[mi % len(markers)],
                        color=colour, ms=5 if r.collapsed else 4, zorder=3, clip_on=False)
                text = f"{r.number}" + (f" ↑{r.wer:.0f}" if r.collapsed else "")
                labels.append((r._asdict()[key], y, text, colour))
        ax.set_ylim(0, top)
        if key == "rtf" and _wide(p[key]):
            ax.set_xscale("log")  # eager int8-dynamic or int2 runs can be 10× slower than fp32
            # plain decimals at 1-2-5 steps: matplotlib's 2×10⁻¹-style minor labels collide
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            xlabel += " (log scale)"
        ax.set_xlabel(xlabel)
        ax.set_ylabel("WER (%), pooled over the splits")
        fig.canvas.draw()
        style.place_labels(ax, labels, fontsize=6.5)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="^" if r.collapsed else "o",
                      color=style.library_colour(r.library),
                      label=f"{r.number} {r.entry}" + (f" [{r.model}]" if len(models) > 1 else ""))
               for r in p.itertuples()]
    if handles:
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                   fontsize=6.5, handletextpad=0.2, labelspacing=0.3)
    else:
        axes[0].text(0.5, 0.5, f"no runs on {device}", ha="center", va="center",
                     transform=axes[0].transAxes)
    fig.suptitle(f"Pareto fronts on {device}: circled + dashed = not dominated; "
                 f"▲ collapsed (WER > {style.COLLAPSE:g}× fp32, off the front), WER written")
    fig.tight_layout()
    return _done(fig, png)


def noise(df: pd.DataFrame, png=None):
    """WER vs SNR per entry, one panel per (split, noise kind) on one shared WER scale; the
    clean split's WER is a dashed line of the same colour, not a point at a made-up SNR."""
    plt = style.plt()
    ok = df[df["status"] == "ok"]
    noisy = ok[ok["noise"] != ""]
    kinds = sorted(set(zip(noisy["base_split"], noisy["noise"])))
    fig, axes = plt.subplots(1, max(1, len(kinds)), sharey=True, squeeze=False,
                             figsize=(style.PAGE if len(kinds) > 1 else style.COLUMN + 0.4, 2.8))
    if not kinds:
        axes[0][0].text(0.5, 0.5, "no noisy splits configured", ha="center", va="center")
        axes[0][0].set_axis_off()
    label = _labeller(noisy)
    series = list(dict.fromkeys(map(tuple, noisy[KEY].itertuples(index=False))))
    styles = {}
    for k in series:  # entries of one library: the library's colour, another marker / line
        lib = noisy[(noisy[KEY] == pd.Series(k, index=KEY)).all(axis=1)]["library"].iloc[0]
        n = sum(1 for s in styles.values() if s[0] == lib)
        styles[k] = (lib, "os^Dv"[n % 5], ["-", "--", ":", "-."][n % 4])
    for ax, (base, kind) in zip(axes[0], kinds):
        these = noisy[(noisy["base_split"] == base) & (noisy["noise"] == kind)]
        for k in series:
            lib, marker, ls = styles[k]
            colour = style.library_colour(lib)
            s = these[(these[KEY] == pd.Series(k, index=KEY)).all(axis=1)].sort_values("snr_db")
            if s.empty:
                continue
            yerr = None
            if s["wer_lo"].notna().all():
                yerr = _errs(s["wer"], s["wer_lo"], s["wer_hi"])
            ax.errorbar(s["snr_db"], s["wer"], yerr=yerr, color=colour, marker=marker, ls=ls,
                        ms=3.5, lw=1, capsize=2, label=label(*k))
            clean = ok[(ok[KEY] == pd.Series(k, index=KEY)).all(axis=1) & (ok["split"] == base)]
            if not clean.empty:
                ax.axhline(clean["wer"].iloc[0], color=colour, lw=0.8, ls=":", alpha=0.8)
        ax.set_xlabel("SNR (dB)  (dotted lines: the clean split)")
        ax.set_title(f"{base} + {kind} noise")
    axes[0][0].set_ylabel("WER (%), one scale for all panels")
    if kinds:
        axes[0][-1].legend(loc="upper right")
    bars = "bars: " + style.CI_TEXT if noisy["wer_lo"].notna().any() else \
        "no bars: runs.csv lacks wer_lo/wer_hi"
    fig.suptitle(f"WER vs SNR ({bars})")
    fig.tight_layout()
    return _done(fig, png)


def sweep(df: pd.DataFrame, sweep_cfg: dict, png=None):
    """Heatmap of ΔWER by part × split; cells whose interval includes 0 are grey (their value
    still written); n utterances in the title."""
    plt = style.plt()
    splits, mats = sweep_matrix(df, sweep_cfg)
    n = max(1, len(mats))
    rows = max([len(v) for v in mats.values()] or [1])
    fig, axes = plt.subplots(1, n, squeeze=False, figsize=(
        min(style.PAGE, 1.6 + 1.5 * max(1, len(splits)) * n), 1.0 + 0.36 * rows))
    if not mats:
        axes[0][0].text(0.5, 0.5, "no sweep runs", ha="center", va="center")
        axes[0][0].set_axis_off()
    vmax = max([abs(c[0]) for v in mats.values() for _, cells, _ in v
                for c in cells.values()] or [1.0]) or 1.0
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#e6e6e6")
    for ax, ((model, device), lines) in zip(axes[0], mats.items()):
        data = np.array([[cells[s][0] if s in cells and cells[s][3] else np.nan for s in splits]
                         for _, cells, _ in lines], dtype=float)
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto")
        for i, (_, cells, _) in enumerate(lines):
            for j, s in enumerate(splits):
                if s in cells:
                    est, lo, hi, significant = cells[s]
                    colour = ("white" if abs(est) > 0.6 * vmax else "black") if significant else "dimgray"
                    ax.text(j, i, f"{est:+.2f}{MARK if significant else ''}\n[{lo:+.2f}, {hi:+.2f}]",
                            ha="center", va="center", fontsize=6.5, color=colour)
        ax.set_xticks(range(len(splits)), splits)
        ax.set_yticks(range(len(lines)), [p for p, _, _ in lines])
        ax.grid(False)
        ax.set_title(f"{model} — {device}")
        fig.colorbar(im, ax=ax, label="ΔWER vs fp32 (points)")
    utts = df.loc[df["sweep_of"] != "", "utterances"]
    n_text = f"n = {utts.max():.0f} utterances per split; " if utts.notna().any() else ""
    fig.suptitle(f"{sweep_cfg['entry']} on one part at a time: ΔWER [{style.CI_TEXT}]\n"
                 f"{n_text}grey: interval includes 0; {MARK} excludes 0")
    fig.tight_layout()
    return _done(fig, png)


def _done(fig, png, pdf=None, svg=False):
    """Without ``png``: the figure itself (tests measure it); else writes PNG + PDF (+ SVG),
    closes the figure and returns the paths."""
    if png is None:
        return fig
    paths = style.save(fig, png, pdf, svg)
    import matplotlib.pyplot as pyplot

    pyplot.close(fig)
    return paths
