"""Aggregate score files into a tidy CSV, Table 1 (Markdown + LaTeX), Fig. 1, Pareto plots and
the WER-vs-SNR figure, with speaker-bootstrap intervals (``whisper_ptq.stats``).

Every run is compared with the fp32 baseline of the same model, device and split (paired
speaker bootstrap of ΔWER / ΔCER); Table 1 shows the LibriSpeech splits, noisy derived splits
(``test-clean+white10``) go to the CSV and the noise figure.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict

from . import PipelineError
from .io import atomic_path, read_json
from .noise import parse_split
from .stats import (DEFAULT_RESAMPLES, DEFAULT_SEED, edit_totals, entry_stats,
                    hallucination_stats, rate_interval, split_difference)

SHORT = {"test-clean": "c", "test-other": "o"}
BASELINE = "fp32"
MARK = "†"
CSV_FIELDS = [
    "model", "entry", "device", "split", "status", "library", "weights", "activations",
    "act_mode", "symmetric", "granularity", "group_size", "unquantized", "wer", "cer",
    "utterances", "audio_seconds", "compute_seconds", "rtf", "rtfx", "threads", "batch_size",
    "size_reduction", "linear_size_reduction", "bytes_on_disk", "fp32_bytes_on_disk",
    # against the fp32 baseline of the same model/device/split (paired speaker bootstrap)
    "dwer", "dwer_lo", "dwer_hi", "dwer_significant", "dcer", "dcer_lo", "dcer_hi",
    "dcer_significant", "no_regression", "sub", "del", "ins", "ref_words", "hallucinations",
    "hallucination_rate", "speakers", "bootstrap_resamples", "bootstrap_seed", "ci_level",
    # noisy derived splits
    "base_split", "noise", "snr_db",
    # the model parts an entry quantizes ("all" or e.g. "encoder.ffn"; whisper_ptq.parts)
    "parts",
    # where the transcription ran (full provenance: the score JSON); mixed_hardware names
    # the CPU / GPU models when the run's shards did not all run on the same kind
    "git_commit", "git_dirty", "slurm_job_id", "hostname", "cpu_model", "gpu", "loadavg_1m",
    "shards", "mixed_hardware",
]


def row_from_score(score: dict) -> dict:
    facts = score["facts"]
    row = {k: score.get(k) for k in CSV_FIELDS}
    row.update({k: facts.get(k) for k in facts if k in CSV_FIELDS})
    row["unquantized"] = "; ".join(facts.get("unquantized", []))
    row["utterances"] = score["n_utterances"]
    row["status"] = "ok"
    row["parts"] = facts.get("parts") or "all"  # libraries without `parts` quantize every part
    name = parse_split(score["split"])
    row.update(base_split=name.base, noise=name.kind, snr_db=name.snr_db)
    prov = (score.get("provenance") or {}).get("transcribe") or {}
    row.update({k: prov.get(k) for k in ("git_commit", "git_dirty", "slurm_job_id", "hostname", "gpu")})
    row["cpu_model"] = (prov.get("cpu") or {}).get("model")
    row["loadavg_1m"] = (prov.get("loadavg") or [None])[0]
    return row


def unsupported_rows(unsupported: list[dict]) -> list[dict]:
    return [{**{k: None for k in CSV_FIELDS}, **u, "status": f"unsupported: {u['reason']}"}
            for u in unsupported]


def write_csv(rows: list[dict], path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _fmt(x, digits=2):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _key(r):
    return (r["model"], r["device"], r["split"])


def add_statistics(rows: list[dict], scores: dict, *, n_resamples=DEFAULT_RESAMPLES,
                   seed=DEFAULT_SEED) -> list[str]:
    """Fill the bootstrap / no-regression / S/D/I / hallucination columns of every ok row.

    ``scores`` maps (model, device, entry, split) → score dict. Rows without an fp32
    baseline of the same model/device/split keep empty Δ columns; the returned notes say so.
    """
    notes = []
    for r in rows:
        if r["status"] != "ok":
            continue
        score = scores[(r["model"], r["device"], r["entry"], r["split"])]
        base = scores.get((r["model"], r["device"], BASELINE, r["split"]))
        if base is None:
            hal = hallucination_stats(score)
            r.update({k: hal[k] for k in ("hallucinations", "hallucination_rate")})
            tot = edit_totals(score)
            r.update({"sub": tot["substitutions"], "del": tot["deletions"],
                      "ins": tot["insertions"], "ref_words": tot["n"]})
            notes.append(f"{r['model']}/{r['device']}/{r['entry']}/{r['split']}: no fp32 "
                         "baseline run to compare with")
            continue
        r.update(entry_stats(base, score, n_resamples=n_resamples, seed=seed,
                             what=f"{r['model']}/{r['device']}/{r['entry']}/{r['split']}"))
    return notes


# --------------------------------------------------------------------------- Table 1


def split_order(splits):
    return sorted(splits, key=lambda s: (s not in SHORT, list(SHORT).index(s) if s in SHORT else 0, s))


def table_cells(rows: list[dict]):
    """Per (model, device): ordered entries with WER/CER/ΔWER per plain split, pooled RTF, size."""
    plain = [r for r in rows if r["status"] != "ok" or not r.get("noise")]
    splits = split_order({r["split"] for r in plain if r["status"] == "ok"})
    groups = defaultdict(dict)
    for r in plain:
        key = (r["model"], r["device"])
        cell = groups[key].setdefault(r["entry"], {"status": r["status"], "splits": {},
                                                   "delta": {}, "compute": 0.0, "audio": 0.0,
                                                   "size": r.get("size_reduction")})
        if r["status"] == "ok":
            cell["splits"][r["split"]] = (r["wer"], r["cer"])
            if r.get("dwer") is not None:
                cell["delta"][r["split"]] = (r["dwer"], r["dwer_lo"], r["dwer_hi"],
                                             bool(r["dwer_significant"]))
            cell["compute"] += r["compute_seconds"]
            cell["audio"] += r["audio_seconds"]
    for entries in groups.values():  # baseline first, then the rows' order (build's `order`)
        if BASELINE in entries:
            entries_items = [(BASELINE, entries.pop(BASELINE))] + list(entries.items())
            entries.clear()
            entries.update(entries_items)
    return splits, groups


def header(splits):
    labels = [SHORT.get(s, s) for s in splits]
    return (["Entry"] + [f"WER{l}" for l in labels] + [f"CER{l}" for l in labels]
            + ["RTF", "Size red. %"] + [f"ΔWER{l} [95 % CI]" for l in labels])


def _delta(d, entry):
    if entry == BASELINE:
        return "(baseline)"
    if d is None:
        return "–"
    est, lo, hi, sig = d
    return f"{est:+.2f}{MARK if sig else ''} [{lo:+.2f}, {hi:+.2f}]"


def cell_values(cell, splits, entry=""):
    if cell["status"] != "ok":
        return ["unsupported"] * (3 * len(splits) + 2)
    wers = [_fmt(cell["splits"].get(s, (None, None))[0]) for s in splits]
    cers = [_fmt(cell["splits"].get(s, (None, None))[1]) for s in splits]
    rtf = cell["compute"] / cell["audio"] if cell["audio"] else None
    deltas = [_delta(cell["delta"].get(s), entry) for s in splits]
    return wers + cers + [_fmt(rtf, 3), _fmt(cell["size"], 1)] + deltas


def legend(rows) -> str:
    ok = [r for r in rows if r["status"] == "ok" and r.get("bootstrap_resamples")]
    boot = (f"{ok[0]['bootstrap_resamples']} resamples, seed {ok[0]['bootstrap_seed']}"
            if ok else "no baseline runs")
    return ("WER/CER in % after the Whisper English normalizer; RTF = transcription seconds / "
            "audio seconds (pooled over splits, warm-up excluded); size reduction of the "
            "checkpoint on disk against fp32. ΔWER = WER − WER of fp32 (same model, device and "
            "split, same utterances), in points, with a 95 % percentile interval from a paired "
            f"bootstrap over speakers ({boot}); {MARK} = the interval excludes zero.")


def markdown_table(rows: list[dict], notes=()) -> str:
    splits, groups = table_cells(rows)
    lines = []
    for (model, device), entries in sorted(groups.items()):
        lines += [f"### {model} — {device}", "", "| " + " | ".join(header(splits)) + " |",
                  "|" + "---|" * len(header(splits))]
        for entry, cell in entries.items():
            lines.append("| " + " | ".join([entry] + cell_values(cell, splits, entry)) + " |")
        lines.append("")
    models = model_comparison(rows)
    if models:
        lines += ["### Models compared", "", models, ""]
    lines.append(legend(rows))
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def model_comparison(rows: list[dict]) -> str:
    """With several models: WER (pooled over the plain splits) per entry × device × model."""
    models = sorted({r["model"] for r in rows if r["status"] == "ok"})
    if len(models) < 2:
        return ""
    pooled = pooled_points(rows)
    keys = sorted({(d, e) for (m, d, e) in pooled})
    out = ["| Device | Entry | " + " | ".join(f"WER {m}" for m in models) + " | "
           + " | ".join(f"Size red. % {m}" for m in models) + " |",
           "|" + "---|" * (2 + 2 * len(models))]
    for d, e in keys:
        wers = [_fmt(pooled.get((m, d, e), {}).get("wer")) for m in models]
        sizes = [_fmt(pooled.get((m, d, e), {}).get("size"), 1) for m in models]
        out.append(f"| {d} | {e} | " + " | ".join(wers + sizes) + " |")
    return "\n".join(out)


def latex_table(rows: list[dict]) -> str:
    splits, groups = table_cells(rows)
    cols = header(splits)

    def esc(s):
        return (str(s).replace("_", r"\_").replace("%", r"\%").replace("–", "--")
                .replace("Δ", r"$\Delta$").replace(MARK, r"$^\dagger$"))

    out = [r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}", r"\toprule",
           " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    for (model, device), entries in sorted(groups.items()):
        out.append(rf"\multicolumn{{{len(cols)}}}{{l}}{{\textit{{{esc(model)} — {esc(device)}}}}} \\")
        for entry, cell in entries.items():
            out.append(" & ".join(esc(v) for v in [entry] + cell_values(cell, splits, entry)) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}",
            "% " + legend(rows).replace("%", r"\%")]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- Fig. 1


def degradation(rows: list[dict], scores: dict | None = None, *, n_resamples=DEFAULT_RESAMPLES,
                seed=DEFAULT_SEED):
    """(model, device, entry, WER test-other − WER test-clean, interval or None) per entry.

    With the score dicts, the interval is an unpaired speaker bootstrap (the two splits have
    disjoint speakers): each resample draws speakers of each split with replacement.
    """
    _, groups = table_cells(rows)
    out = []
    for (model, device), entries in sorted(groups.items()):
        for entry, cell in entries.items():
            s = cell["splits"]
            if "test-clean" in s and "test-other" in s:
                iv = None
                if scores is not None:
                    iv = split_difference(scores[(model, device, entry, "test-clean")],
                                          scores[(model, device, entry, "test-other")],
                                          n_resamples=n_resamples, seed=seed)
                out.append((model, device, entry, s["test-other"][0] - s["test-clean"][0], iv))
    return out


def _save(fig, *paths):
    for path in paths:
        if path is None:
            continue
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=str(path).rsplit(".", 1)[-1], dpi=150)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(rows: list[dict], png, pdf, scores=None, **boot) -> None:
    plt = _plt()
    data = degradation(rows, scores, **boot)
    fig, ax = plt.subplots(figsize=(max(5.5, 0.6 * len(data) + 2), 3.8))
    if data:
        labels = [f"{e}\n{d}" + (f"\n{m}" if len({x[0] for x in data}) > 1 else "")
                  for m, d, e, _, _ in data]
        colors = ["tab:blue" if d == "cpu" else "tab:orange" for _, d, _, _, _ in data]
        heights = [x[3] for x in data]
        yerr = None
        if all(x[4] is not None for x in data):
            yerr = [[h - x[4].low for h, x in zip(heights, data)],
                    [x[4].high - h for h, x in zip(heights, data)]]
        ax.bar(range(len(data)), heights, color=colors, yerr=yerr, capsize=4,
               error_kw={"elinewidth": 1})
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xticks(range(len(data)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("WER test-other − test-clean (points)")
        if yerr is not None:
            ax.text(0.01, 0.99, "bars: 95 % speaker-bootstrap CI\n(splits resampled "
                    "independently)", transform=ax.transAxes, va="top", fontsize=7)
    else:
        ax.text(0.5, 0.5, "needs both test-clean and test-other", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("Fig. 1: WER increase on test-other over test-clean", fontsize=10)
    fig.tight_layout()
    _save(fig, png, pdf)
    plt.close(fig)


# --------------------------------------------------------------------------- Pareto


def pooled_points(rows: list[dict]) -> dict:
    """(model, device, entry) → pooled WER (Σ errors / Σ words over the plain splits), RTF
    (Σ compute / Σ audio), size reduction, and whether some split's ΔWER is significant."""
    acc = {}
    for r in rows:
        if r["status"] != "ok" or r.get("noise"):
            continue
        a = acc.setdefault((r["model"], r["device"], r["entry"]),
                           {"err": 0.0, "n": 0, "compute": 0.0, "audio": 0.0,
                            "size": r["size_reduction"], "splits": []})
        words = r.get("_words")
        if words is None:
            raise PipelineError(f"{r['model']}/{r['device']}/{r['entry']}/{r['split']}: "
                                "score has no word counts")
        a["err"] += words["substitutions"] + words["deletions"] + words["insertions"]
        a["n"] += words["n"]
        a["compute"] += r["compute_seconds"]
        a["audio"] += r["audio_seconds"]
        a["splits"].append(r["split"])
    return {k: {"wer": 100.0 * a["err"] / a["n"] if a["n"] else float("nan"),
                "rtf": a["compute"] / a["audio"] if a["audio"] else float("nan"),
                "size": a["size"], "splits": sorted(a["splits"])}
            for k, a in acc.items()}


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


# WER above this multiple of the model's fp32 WER (collapsed schemes, e.g. 2-bit) is drawn
# at the plot's top edge with its value, so that it does not squash the other points
PARETO_CAP = 4.0


def pareto_cap(wers, baseline):
    """Upper WER shown on a Pareto plot: every point, unless some exceed PARETO_CAP× fp32."""
    top = max(wers)
    if baseline is None or top <= PARETO_CAP * baseline:
        return None
    return PARETO_CAP * baseline


def pareto_figure(rows: list[dict], device: str, png) -> None:
    """Size reduction vs WER and RTF vs WER; the non-dominated entries (and fp32) are labelled,
    the rest are dots (every value is in runs.csv)."""
    plt = _plt()
    pooled = {k: v for k, v in pooled_points(rows).items() if k[1] == device}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    models = sorted({m for m, _, _ in pooled})
    cmap = plt.get_cmap("tab10")
    specs = [(axes[0], "size", True, "size reduction vs fp32 (%)  →  smaller checkpoint"),
             (axes[1], "rtf", False, "RTF (compute s / audio s)  ←  faster")]
    caps = [pareto_cap([v["wer"] for (m, _, _), v in pooled.items() if m == model],
                       pooled.get((model, device, BASELINE), {}).get("wer"))
            for model in models]
    ymax = max((c for c in caps if c is not None), default=None)
    for ax, key, maximize, xlabel in specs:
        for mi, model in enumerate(models):
            items = [(e, v) for (m, _, e), v in pooled.items() if m == model]
            pts = [(v[key], v["wer"]) for _, v in items]
            color = cmap(mi % 10)
            front = pareto_front(pts, maximize)
            shown = [(x, y if ymax is None else min(y, ymax)) for x, y in pts]
            ax.scatter([p[0] for p in shown], [p[1] for p in shown], color=color, zorder=3, s=18,
                       label=model if len(models) > 1 else None)
            for i, ((entry, _), (x, y)) in enumerate(zip(items, pts)):
                off_scale = ymax is not None and y > ymax
                if off_scale:
                    ax.annotate(f"{entry} ↑ {y:.0f}", (x, ymax), textcoords="offset points",
                                xytext=(4, -10), fontsize=7, color="dimgray")
                elif i in front or entry == BASELINE:
                    ax.annotate(entry, (x, y), textcoords="offset points", xytext=(4, 4),
                                fontsize=7)
            if front:
                fx, fy = [shown[i][0] for i in front], [shown[i][1] for i in front]
                ax.plot(fx, fy, color=color, lw=1, ls="--", zorder=2)
                ax.plot(fx, fy, "o", mfc="none", mec=color, ms=11, zorder=2)
        if ymax is not None:
            ax.set_ylim(0, ymax * 1.04)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("WER (%), pooled over LibriSpeech splits (lower is better)", fontsize=8)
        ax.grid(alpha=0.3)
        if len(models) > 1:
            ax.legend(fontsize=7)
    if not pooled:
        axes[0].text(0.5, 0.5, f"no runs on {device}", ha="center", va="center")
    title = f"Pareto fronts on {device} (circled, dashed, labelled: not dominated)"
    if ymax is not None:
        title += f"\nWER over {PARETO_CAP:g}× fp32 drawn at the top edge, value given"
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, png)
    plt.close(fig)


# --------------------------------------------------------------------------- noise


def noise_figure(rows: list[dict], scores: dict, png, *, n_resamples=DEFAULT_RESAMPLES,
                 seed=DEFAULT_SEED) -> None:
    """WER vs SNR per (model, device, entry), one panel per noise kind; the clean split's WER
    is drawn at the right ("clean"). Error bars: 95 % speaker-bootstrap CI of each WER."""
    plt = _plt()
    noisy = [r for r in rows if r["status"] == "ok" and r.get("noise")]
    kinds = sorted({(r["base_split"], r["noise"]) for r in noisy})
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(5 * max(1, len(kinds)), 4),
                             squeeze=False)
    if not kinds:
        axes[0][0].text(0.5, 0.5, "no noisy splits configured\n(splits: [test-clean+white10, …])",
                        ha="center", va="center")
        axes[0][0].set_axis_off()
    for ax, (base, kind) in zip(axes[0], kinds):
        these = [r for r in noisy if (r["base_split"], r["noise"]) == (base, kind)]
        snrs = sorted({r["snr_db"] for r in these})
        clean_x = max(snrs) + max(5.0, (max(snrs) - min(snrs)) / 4) if snrs else 0
        series = sorted({(r["model"], r["device"], r["entry"]) for r in these})
        for k, (m, d, e) in enumerate(series):
            pts = sorted((r["snr_db"], r["split"]) for r in these
                         if (r["model"], r["device"], r["entry"]) == (m, d, e))
            if (m, d, e, base) in scores:
                pts.append((clean_x, base))
            xs, ys, lo, hi = [], [], [], []
            for x, split in pts:
                iv = rate_interval(scores[(m, d, e, split)], n_resamples=n_resamples, seed=seed)
                xs.append(x), ys.append(iv.estimate)
                lo.append(iv.estimate - iv.low), hi.append(iv.high - iv.estimate)
            label = e + (f" ({d})" if len({s[1] for s in series}) > 1 else "") \
                + (f" [{m}]" if len({s[0] for s in series}) > 1 else "")
            ax.errorbar([x + 0.15 * (k - len(series) / 2) for x in xs], ys, yerr=[lo, hi],
                        marker="o", capsize=3, label=label)
        ticks = snrs + [clean_x]
        ax.set_xticks(ticks, [f"{s:g}" for s in snrs] + ["clean"])
        ax.set_xlabel("SNR (dB)")
        ax.set_ylabel("WER (%)")
        ax.set_title(f"{base} + {kind} noise")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("WER vs SNR (bars: 95 % speaker-bootstrap CI)")
    fig.tight_layout()
    _save(fig, png)
    plt.close(fig)


# --------------------------------------------------------------------------- sweep


def sweep_matrix(rows: list[dict], sweep: dict):
    """Per (model, device): [(part, {split: (ΔWER, lo, hi, significant)}, size red.)] for the
    sweep's parts, then "all" (the unrestricted entry) when it was run."""
    order = list(sweep["parts"].items()) + [("all", sweep["entry"])]
    plain = [r for r in rows if r["status"] == "ok" and not r.get("noise")]
    splits = split_order({r["split"] for r in plain})
    out = {}
    for model, device in sorted({(r["model"], r["device"]) for r in plain}):
        lines = []
        for part, entry in order:
            cells = {r["split"]: (r["dwer"], r["dwer_lo"], r["dwer_hi"], bool(r["dwer_significant"]))
                     for r in plain if (r["model"], r["device"], r["entry"]) == (model, device, entry)
                     and r.get("dwer") is not None}
            size = next((r["linear_size_reduction"] for r in plain
                         if (r["model"], r["device"], r["entry"]) == (model, device, entry)), None)
            if cells:
                lines.append((part, cells, size))
        if lines:
            out[(model, device)] = lines
    return splits, out


def sweep_markdown(rows, sweep) -> str:
    splits, mats = sweep_matrix(rows, sweep)
    labels = [SHORT.get(s, s) for s in splits]
    lines = [f"## Sensitivity sweep: {sweep['entry']} restricted to one part at a time", ""]
    for (model, device), lines_ in mats.items():
        lines += [f"### {model} — {device}", "",
                  "| Part | " + " | ".join(f"ΔWER{l} [95 % CI]" for l in labels)
                  + " | Linear size red. % |", "|" + "---|" * (len(splits) + 2)]
        for part, cells, size in lines_:
            vals = [_delta(cells.get(s), "") for s in splits]
            lines.append(f"| {part} | " + " | ".join(vals) + f" | {_fmt(size, 1)} |")
        lines.append("")
    if not mats:
        lines.append("No sweep runs with an fp32 baseline yet.")
    lines.append("ΔWER against fp32 (same model, device, split), 95 % paired speaker-bootstrap "
                 f"interval; {MARK} = excludes zero. 'all' = the scheme on every nn.Linear.")
    return "\n".join(lines) + "\n"


def sweep_figure(rows, sweep, png) -> None:
    import numpy as np

    plt = _plt()
    splits, mats = sweep_matrix(rows, sweep)
    n = max(1, len(mats))
    fig, axes = plt.subplots(1, n, figsize=(2.2 + 2.2 * max(1, len(splits)) * n, 1.2 + 0.45 *
                             max([len(v) for v in mats.values()] or [1])), squeeze=False)
    if not mats:
        axes[0][0].text(0.5, 0.5, "no sweep runs", ha="center", va="center")
        axes[0][0].set_axis_off()
    vmax = max([abs(c[0]) for v in mats.values() for _, cells, _ in v for c in cells.values()]
               or [1.0]) or 1.0
    for ax, ((model, device), lines_) in zip(axes[0], mats.items()):
        data = np.array([[cells.get(s, (np.nan,))[0] for s in splits] for _, cells, _ in lines_],
                        dtype=float)
        im = ax.imshow(data, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        for i, (_, cells, _) in enumerate(lines_):
            for j, s in enumerate(splits):
                if s in cells:
                    est, lo, hi, sig = cells[s]
                    ax.text(j, i, f"{est:+.2f}{MARK if sig else ''}\n[{lo:+.2f}, {hi:+.2f}]",
                            ha="center", va="center", fontsize=7,
                            color="white" if abs(est) > 0.6 * vmax else "black")
        ax.set_xticks(range(len(splits)), splits, fontsize=8)
        ax.set_yticks(range(len(lines_)), [p for p, _, _ in lines_], fontsize=8)
        ax.set_title(f"{model} — {device}", fontsize=9)
        fig.colorbar(im, ax=ax, label="ΔWER vs fp32 (points)")
    fig.suptitle(f"Sensitivity: {sweep['entry']} on one part at a time "
                 f"(95 % speaker-bootstrap CI; {MARK} excludes 0)", fontsize=9)
    fig.tight_layout()
    _save(fig, png)
    plt.close(fig)


# --------------------------------------------------------------------------- build


def load_scores(score_paths):
    scores, rows = {}, []
    for p in score_paths:
        s = read_json(p)
        key = (s["model"], s["device"], s["entry"], s["split"])
        if key in scores:
            raise PipelineError(f"score {p}: {'/'.join(key)} is given twice")
        scores[key] = s
        row = row_from_score(s)
        row["_words"] = s.get("words")
        rows.append(row)
    return scores, rows


def build(score_paths, unsupported: list[dict], out_csv, out_md, out_tex, out_png, out_pdf, *,
          pareto: dict | None = None, noise_png=None, n_resamples: int = DEFAULT_RESAMPLES,
          seed: int = DEFAULT_SEED, sweep: dict | None = None, sweep_md=None, sweep_png=None,
          order: list[str] | None = None):
    """Write every report output; ``pareto`` maps device → png path; ``sweep`` is
    ``Study.sweep`` ({"entry": name, "parts": {part: entry name}}); ``order`` lists the entry
    names in the order the tables give them (``Study.entry_order()``)."""
    boot = {"n_resamples": n_resamples, "seed": seed}
    scores, rows = load_scores(score_paths)
    rows += unsupported_rows(unsupported)
    rank = {name: i for i, name in enumerate(order or ())}  # unlisted entries: last, by name
    rows.sort(key=lambda r: (r["model"], r["device"], rank.get(r["entry"], len(rank)),
                             r["entry"], r["split"] or ""))
    notes = add_statistics(rows, scores, **boot)
    write_csv(rows, out_csv)
    for path, text in ((out_md, markdown_table(rows, notes)), (out_tex, latex_table(rows))):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    figure(rows, out_png, out_pdf, scores, **boot)
    for device, png in (pareto or {}).items():
        pareto_figure(rows, device, png)
    if noise_png is not None:
        noise_figure(rows, scores, noise_png, **boot)
    if sweep and sweep_md is not None:
        with atomic_path(sweep_md) as tmp:
            tmp.write_text(sweep_markdown(rows, sweep))
    if sweep and sweep_png is not None:
        sweep_figure(rows, sweep, sweep_png)
    return rows
