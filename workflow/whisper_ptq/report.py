"""Aggregate score files into a tidy CSV, Table 1 (Markdown + LaTeX) and Fig. 1."""

from __future__ import annotations

import csv
import math
from collections import defaultdict

from .io import atomic_path, read_json

SHORT = {"test-clean": "c", "test-other": "o"}
CSV_FIELDS = [
    "model", "entry", "device", "split", "status", "library", "weights", "activations",
    "act_mode", "symmetric", "granularity", "group_size", "unquantized", "wer", "cer",
    "utterances", "audio_seconds", "compute_seconds", "rtf", "rtfx", "threads", "batch_size",
    "size_reduction", "linear_size_reduction", "bytes_on_disk", "fp32_bytes_on_disk",
]


def row_from_score(score: dict) -> dict:
    facts = score["facts"]
    row = {k: score.get(k) for k in CSV_FIELDS}
    row.update({k: facts.get(k) for k in facts if k in CSV_FIELDS})
    row["unquantized"] = "; ".join(facts.get("unquantized", []))
    row["status"] = "ok"
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


def table_cells(rows: list[dict]):
    """Per (model, device): ordered entries with WER/CER per split, pooled RTF, size."""
    splits = sorted({r["split"] for r in rows if r["status"] == "ok"},
                    key=lambda s: (s not in SHORT, list(SHORT).index(s) if s in SHORT else 0, s))
    groups = defaultdict(dict)
    for r in rows:
        key = (r["model"], r["device"])
        cell = groups[key].setdefault(r["entry"], {"status": r["status"], "splits": {},
                                                   "compute": 0.0, "audio": 0.0,
                                                   "size": r.get("size_reduction")})
        if r["status"] == "ok":
            cell["splits"][r["split"]] = (r["wer"], r["cer"])
            cell["compute"] += r["compute_seconds"]
            cell["audio"] += r["audio_seconds"]
    return splits, groups


def header(splits):
    labels = [SHORT.get(s, s) for s in splits]
    return ["Entry"] + [f"WER{l}" for l in labels] + [f"CER{l}" for l in labels] + ["RTF", "Size red. %"]


def cell_values(cell, splits):
    if cell["status"] != "ok":
        return ["unsupported"] * (2 * len(splits) + 2)
    wers = [_fmt(cell["splits"].get(s, (None, None))[0]) for s in splits]
    cers = [_fmt(cell["splits"].get(s, (None, None))[1]) for s in splits]
    rtf = cell["compute"] / cell["audio"] if cell["audio"] else None
    return wers + cers + [_fmt(rtf, 3), _fmt(cell["size"], 1)]


def markdown_table(rows: list[dict]) -> str:
    splits, groups = table_cells(rows)
    lines = []
    for (model, device), entries in sorted(groups.items()):
        lines += [f"### {model} — {device}", "", "| " + " | ".join(header(splits)) + " |",
                  "|" + "---|" * len(header(splits))]
        for entry, cell in entries.items():
            lines.append("| " + " | ".join([entry] + cell_values(cell, splits)) + " |")
        lines.append("")
    lines.append("WER/CER in % after the Whisper English normalizer; RTF = transcription "
                 "seconds / audio seconds (pooled over splits, warm-up excluded); size "
                 "reduction of the checkpoint on disk against fp32.")
    return "\n".join(lines) + "\n"


def latex_table(rows: list[dict]) -> str:
    splits, groups = table_cells(rows)
    cols = header(splits)
    esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("–", "--")
    out = [r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}", r"\toprule",
           " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    for (model, device), entries in sorted(groups.items()):
        out.append(rf"\multicolumn{{{len(cols)}}}{{l}}{{\textit{{{esc(model)} — {esc(device)}}}}} \\")
        for entry, cell in entries.items():
            out.append(" & ".join(esc(v) for v in [entry] + cell_values(cell, splits)) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def degradation(rows: list[dict]) -> list[tuple[str, str, str, float]]:
    """(model, device, entry, WER test-other − WER test-clean) for entries with both."""
    _, groups = table_cells(rows)
    out = []
    for (model, device), entries in sorted(groups.items()):
        for entry, cell in entries.items():
            s = cell["splits"]
            if "test-clean" in s and "test-other" in s:
                out.append((model, device, entry, s["test-other"][0] - s["test-clean"][0]))
    return out


def figure(rows: list[dict], png, pdf) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = degradation(rows)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(data) + 2), 3.5))
    if data:
        labels = [f"{e}\n{d}" + (f"\n{m}" if len({x[0] for x in data}) > 1 else "") for m, d, e, _ in data]
        colors = ["tab:blue" if d == "cpu" else "tab:orange" for _, d, _, _ in data]
        ax.bar(range(len(data)), [x[3] for x in data], color=colors)
        ax.set_xticks(range(len(data)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("WER test-other − test-clean (points)")
    else:
        ax.text(0.5, 0.5, "needs both test-clean and test-other", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("Fig. 1: WER increase on test-other over test-clean")
    fig.tight_layout()
    for path in (png, pdf):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=str(path).rsplit(".", 1)[-1])
    plt.close(fig)


def build(score_paths, unsupported: list[dict], out_csv, out_md, out_tex, out_png, out_pdf):
    rows = [row_from_score(read_json(p)) for p in score_paths] + unsupported_rows(unsupported)
    rows.sort(key=lambda r: (r["model"], r["device"], r["entry"], r["split"] or ""))
    write_csv(rows, out_csv)
    for path, text in ((out_md, markdown_table(rows)), (out_tex, latex_table(rows))):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    figure(rows, out_png, out_pdf)
    return rows
