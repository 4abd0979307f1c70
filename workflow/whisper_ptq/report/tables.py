"""Table 1 (Markdown, LaTeX), the cost table, the models comparison, the sweep table and the
terminal summary, all pivots of the tidy runs table (``runs.read_runs``)."""

from __future__ import annotations

import pandas as pd

from ..records import SCORE_TIMING
from ..stats import TOO_LONG
from .runs import BASELINE

SHORT = {"test-clean": "c", "test-other": "o"}
MARK = "†"
KEY = ["model", "device", "entry"]


def _fmt(x, digits=2):
    return "–" if x is None or pd.isna(x) else f"{x:.{digits}f}"


def split_order(splits):
    return sorted(splits, key=lambda s: (s not in SHORT, list(SHORT).index(s) if s in SHORT else 0, s))


def plain(df: pd.DataFrame) -> pd.DataFrame:
    """The LibriSpeech splits' rows and the unsupported rows (noisy splits go elsewhere)."""
    return df[(df["status"] != "ok") | (df["noise"] == "")]


def delta_text(est, lo, hi, sig) -> str:
    if est is None or pd.isna(est):
        return "–"
    return f"{est:+.2f}{MARK if sig else ''} [{lo:+.2f}, {hi:+.2f}]"


def _ordered_keys(df: pd.DataFrame) -> list[tuple]:
    """(model, device, entry) in the table's order: groups sorted, fp32 first in each, then
    the rows' own order (``build``'s ``order``)."""
    keys = list(dict.fromkeys(map(tuple, df[KEY].itertuples(index=False))))
    return sorted(keys, key=lambda k: (k[0], k[1], k[2] != BASELINE, keys.index(k)))


def per_split(rows: pd.DataFrame, col: str, index: pd.MultiIndex, splits) -> dict:
    """{split: ``col`` of that split's row for each (model, device, entry) of ``index``, None
    where there is none}."""
    pivot = rows.pivot_table(index=KEY, columns="split", values=col, aggfunc="first",
                             dropna=False)
    return {s: list(pivot[s].reindex(index)) if s in pivot else [None] * len(index)
            for s in splits}


def cells(df: pd.DataFrame):
    """(splits, wide): one row per (model, device, entry) with WER/CER/ΔWER per plain split,
    RTF pooled over them (Σ compute / Σ audio), size reduction; every cell as text."""
    rows = plain(df)
    ok = rows[rows["status"] == "ok"]
    splits = split_order(set(ok["split"]))
    order = _ordered_keys(rows)
    index = pd.MultiIndex.from_tuples(order, names=KEY)
    wide = pd.DataFrame(index=index)
    if not ok.empty:
        delta = ok.assign(delta=[
            "(baseline)" if e == BASELINE else delta_text(*v) for e, v in
            zip(ok["entry"], ok[["dwer", "dwer_lo", "dwer_hi", "dwer_significant"]].itertuples(index=False))])
        for col, name in (("wer", "WER"), ("cer", "CER"), ("delta", "ΔWER")):
            src = delta if col == "delta" else ok
            for s, vals in per_split(src, col, index, splits).items():
                label = f"{name}{SHORT.get(s, s)}" + (" [95 % CI]" if col == "delta" else "")
                wide[label] = [v if col == "delta" and isinstance(v, str) else
                               (_fmt(v) if col != "delta" else "–") for v in vals]
        pooled = ok.groupby(KEY, sort=False)[["compute_seconds", "audio_seconds"]].sum()
        rtf = (pooled["compute_seconds"] / pooled["audio_seconds"]).reindex(index)
        size = ok.groupby(KEY, sort=False)["size_reduction"].first().reindex(index)
        wide.insert(2 * len(splits), "RTF", [_fmt(v, 3) for v in rtf])
        wide.insert(2 * len(splits) + 1, "Size red. %", [_fmt(v, 1) for v in size])
    status = rows.groupby(KEY, sort=False)["status"].first().reindex(index)
    wide.loc[(status != "ok").to_numpy(), :] = "unsupported"
    return splits, wide


def legend(df: pd.DataFrame) -> str:
    ok = df[(df["status"] == "ok") & df["bootstrap_resamples"].notna()]
    boot = (f"{int(ok['bootstrap_resamples'].iloc[0])} resamples, seed "
            f"{int(ok['bootstrap_seed'].iloc[0])}" if not ok.empty else "no baseline runs")
    return ("WER/CER in % after the Whisper English normalizer; RTF = transcription seconds / "
            "audio seconds (pooled over splits, warm-up excluded); size reduction of the "
            "checkpoint on disk against fp32. ΔWER = WER − WER of fp32 (same model, device and "
            "split, same utterances), in points, with a 95 % percentile interval from a paired "
            f"bootstrap over speakers ({boot}); {MARK} = the interval excludes zero.")


def _markdown(frame: pd.DataFrame) -> str:
    """Unpadded pipe table: rows diff line by line, and cells stay greppable (``| fp32 |``)."""
    rows = [list(frame.columns), *frame.astype(str).to_numpy().tolist()]
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([lines[0], "|" + "---|" * frame.shape[1], *lines[1:]])


def hallucination_notes(df: pd.DataFrame) -> list[str]:
    """One line per plain-split row whose flagged hypotheses (``stats.hallucination``) hold at
    least half of its word errors: there a handful of loops, not the whole split, make the
    WER, and ΔWER's interval is wide for that reason."""
    rows = plain(df)
    errors = rows["sub"] + rows["del"] + rows["ins"]
    held = rows[(rows["status"] == "ok") & (rows["hallucination_errors"] > 0)
                & (2 * rows["hallucination_errors"] >= errors)]
    flagged = lambda n: ("1 hallucinated hypothesis holds" if n == 1  # noqa: E731
                         else f"{n:.0f} hallucinated hypotheses hold")
    return [f"{_where(df, r)} on {r.split}: {flagged(r.hallucinations)} "
            f"{r.hallucination_errors:.0f} of its {e:.0f} word errors (a loop, or over "
            f"{TOO_LONG:g}× the reference's length)."
            for r, e in zip(held.itertuples(index=False), errors[held.index])]


def _where(df: pd.DataFrame, r) -> str:
    """A row's entry, with its model and device only where the table has several."""
    return "/".join([r.entry] + [r.model] * (df["model"].nunique() > 1)
                    + [r.device] * (df["device"].nunique() > 1))


def fallback_notes(df: pd.DataFrame) -> list[str]:
    """Under ``decoding.fallback``: a line saying so, and one per row that kept sampled
    hypotheses (how many)."""
    rows = plain(df)
    rows = rows[(rows["status"] == "ok") & rows["fallback_utterances"].notna()]
    if rows.empty:
        return []
    kept = rows[rows["fallback_utterances"] > 0]
    return ["Decoded with temperature fallback (decoding.fallback): a greedy hypothesis that "
            "compressed too well or was too improbable was decoded again by sampling."] + [
        f"{_where(df, r)} on {r.split}: {r.fallback_utterances:.0f} of {r.utterances:.0f} "
        "hypotheses kept from sampling." for r in kept.itertuples(index=False)]


def row_notes(df: pd.DataFrame) -> list[str]:
    """The notes under Table 1 that the rows themselves give."""
    return [*hallucination_notes(df), *fallback_notes(df)]


def markdown_table(df: pd.DataFrame, notes=()) -> str:
    _, wide = cells(df)
    lines = []
    for (model, device), block in wide.groupby(level=["model", "device"], sort=True):
        block = block.reset_index(level=["model", "device"], drop=True).reset_index()
        lines += [f"### {model} — {device}", "", _markdown(block.rename(columns={"entry": "Entry"})), ""]
    models = model_comparison(df)
    if models:
        lines += ["### Models compared", "", models, ""]
    lines.append(legend(df))
    lines += [f"- {n}" for n in [*row_notes(df), *notes]]
    return "\n".join(lines) + "\n"


def pooled(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, device, entry) over the plain splits: WER (Σ errors / Σ reference words),
    RTF (Σ compute / Σ audio), size reduction, library, sweep_of."""
    ok = plain(df)
    ok = ok[ok["status"] == "ok"].assign(errors=lambda d: d["sub"] + d["del"] + d["ins"])
    g = ok.groupby(KEY, sort=False)
    out = g[["errors", "ref_words", "compute_seconds", "audio_seconds"]].sum()
    out["wer"] = 100.0 * out["errors"] / out["ref_words"]
    out["rtf"] = out["compute_seconds"] / out["audio_seconds"]
    out[["size", "library", "sweep_of"]] = g[["size_reduction", "library", "sweep_of"]].first()
    return out.reset_index()


def model_comparison(df: pd.DataFrame) -> str:
    """With several models: WER (pooled over the plain splits) per device × entry × model."""
    ok = df[df["status"] == "ok"]
    if ok["model"].nunique() < 2:
        return ""
    p = pooled(df)
    wide = p.pivot_table(index=["device", "entry"], columns="model", values=["wer", "size"],
                         aggfunc="first")
    models = sorted(p["model"].unique())
    table = pd.DataFrame({"Device": wide.index.get_level_values(0),
                          "Entry": wide.index.get_level_values(1)})
    for m in models:
        table[f"WER {m}"] = [_fmt(v) for v in wide[("wer", m)]]
    for m in models:
        table[f"Size red. % {m}"] = [_fmt(v, 1) for v in wide[("size", m)]]
    return _markdown(table)


# the cost table's columns: (heading, runs.csv column, per split or over the splits, how the
# splits combine, scale, digits); a column no row of a block has is left out of that block
COST_COLUMNS = (
    ("RTF", "rtf", "split", None, 1, 3),
    ("Enc. s", "encoder_seconds", "pooled", "sum", 1, 1),
    ("Dec. s", "decoder_seconds", "pooled", "sum", 1, 1),
    ("Peak RSS MiB", "peak_rss_mb", "pooled", "max", 1, 0),
    ("Timed peak MiB", "timed_peak_rss_mb", "pooled", "max", 1, 0),
    ("Resident MiB", "resident_rss_mb", "pooled", "max", 1, 0),
    ("Peak CUDA MiB", "cuda_peak_allocated_mb", "pooled", "max", 1, 0),
    ("p50", "latency_p50_s", "split", None, 1, 2),
    ("p90", "latency_p90_s", "split", None, 1, 2),
    ("Size MB", "bytes_on_disk", "pooled", "first", 1e-6, 1),
)
COST_LEGEND = (
    "RTF per split (Table 1 pools them); Enc. s / Dec. s = the timed seconds in the encoder and "
    "in the decoding loop, summed over the splits; peak RSS = the largest resident set of the "
    "entry's transcription jobs (model loading included), timed peak = that of their timed "
    "loops alone (after loading and warm-up), resident = what a timed loop leaves resident "
    "once the allocator's free memory is given back (libraries, model, a runtime's buffers: "
    "the process between batches; timed peak − resident is the batches' working set), peak "
    "CUDA = torch's largest CUDA allocation in them (a runtime's own CUDA memory is not in "
    "it); p50 / p90 = per-utterance latency in seconds (`timing: {regime: latency}` only); "
    "size = the checkpoint on disk (MB = 10⁶ bytes). Times are of one run on one machine: "
    "compare entries within a block, and speed across runs through the paired benchmarks "
    "(benchmarks/README.md).")


def cost_markdown(df: pd.DataFrame) -> str:
    """What each entry costs beside its accuracy (cost.md): per model × device, RTF per
    split, encoder / decoder seconds, peak memory, latency and size on disk, from the plain
    splits' rows of runs.csv; columns without a value in a block are left out."""
    rows = plain(df)
    ok = rows[rows["status"] == "ok"]
    splits = split_order(set(ok["split"]))
    lines = ["## What each entry costs: time, memory, size", ""]
    for (model, device), block in ok.groupby(["model", "device"], sort=True):
        keys = _ordered_keys(block)
        index = pd.MultiIndex.from_tuples(keys, names=KEY)
        g = block.groupby(KEY, sort=False)
        table = pd.DataFrame({"Entry": [k[2] for k in keys]})
        for heading, col, kind, how, scale, digits in COST_COLUMNS:
            if block[col].isna().all():
                continue
            if kind == "split":
                for s, vals in per_split(block, col, index, splits).items():
                    table[f"{heading} {SHORT.get(s, s)}"] = [_fmt(v, digits) for v in vals]
            else:
                vals = getattr(g[col], how)(min_count=1) if how == "sum" else getattr(g[col], how)()
                table[heading] = [_fmt(v * scale, digits) for v in vals.reindex(index)]
        lines += [f"### {model} — {device}", "", _markdown(table), ""]
    if ok.empty:
        lines += ["No scored runs.", ""]
    elif ok[[c for _, c, *_ in COST_COLUMNS if c in SCORE_TIMING]].isna().all().all():
        lines += ["(No encoder / decoder split or peak memory in these rows: they were "
                  "scored before runs.csv carried them.)", ""]
    lines.append(COST_LEGEND)
    return "\n".join(lines) + "\n"


def _tex(s) -> str:
    return (str(s).replace("_", r"\_").replace("%", r"\%").replace("—", "---")
            .replace("–", "--").replace("Δ", r"$\Delta$").replace(MARK, r"$^\dagger$")
            .replace("&", r"\&").replace("#", r"\#"))


def latex_table(df: pd.DataFrame) -> str:
    """Table 1 as a booktabs tabular (``\\usepackage{booktabs}``); the first column names
    model and device on the first row of each block."""
    _, wide = cells(df)
    flat = wide.reset_index()
    block = flat["model"] + " — " + flat["device"]
    flat.insert(0, "Model — device", block.where(block != block.shift(), ""))
    flat = flat.drop(columns=["model", "device"]).rename(columns={"entry": "Entry"})
    flat = flat.map(_tex).rename(columns=_tex)
    # by hand rather than DataFrame.to_latex, which needs Jinja2 in the env
    rows = [" & ".join(flat.columns)] + [" & ".join(r) for r in flat.itertuples(index=False)]
    lines = ([r"\begin{tabular}{ll" + "r" * (flat.shape[1] - 2) + "}", r"\toprule",
              rows[0] + r" \\", r"\midrule"] + [r + r" \\" for r in rows[1:]]
             + [r"\bottomrule", r"\end{tabular}", "% " + _tex(legend(df))])
    return "\n".join(lines) + "\n"


def sweep_markdown(df: pd.DataFrame, sweep_entry: str, matrix) -> str:
    splits, mats = matrix
    labels = [SHORT.get(s, s) for s in splits]
    lines = [f"## Sensitivity sweep: {sweep_entry} restricted to one part at a time", ""]
    for (model, device), rows in mats.items():
        table = pd.DataFrame({"Part": [part for part, _, _ in rows]})
        for s, label in zip(splits, labels):
            table[f"ΔWER{label} [95 % CI]"] = [delta_text(*c[s]) if s in c else "–"
                                              for _, c, _ in rows]
        table["Linear size red. %"] = [_fmt(size, 1) for _, _, size in rows]
        lines += [f"### {model} — {device}", "", _markdown(table), ""]
    if not mats:
        lines.append("No sweep runs with an fp32 baseline yet.")
    n = df.loc[df["sweep_of"] == sweep_entry, "utterances"]
    lines.append("ΔWER against fp32 (same model, device, split), 95 % paired speaker-bootstrap "
                 f"interval; {MARK} = excludes zero. 'all' = the scheme on every nn.Linear."
                 + (f" n = {int(n.max())} utterances per split." if n.notna().any() else ""))
    return "\n".join(lines) + "\n"


def summary(df: pd.DataFrame) -> str:
    """Compact Table 1 for the terminal: per model/device, entry × split WER and ΔWER
    [interval], pooled RTF, size reduction; then the notes the rows give (row_notes)."""
    splits, wide = cells(df)
    out = []
    for (model, device), block in wide.groupby(level=["model", "device"], sort=True):
        block = block.reset_index(level=["model", "device"], drop=True)
        cols = {}
        for s in splits:
            short = SHORT.get(s, s)
            cols[f"WER{short}"] = block[f"WER{short}"]
            cols[f"ΔWER{short} [95% CI]"] = block[f"ΔWER{short} [95 % CI]"].replace(
                "(baseline)", "baseline")
        cols["RTF"], cols["size%"] = block["RTF"], block["Size red. %"]
        table = pd.DataFrame(cols).reset_index()
        table.loc[table["RTF"] == "unsupported", list(cols)[1:]] = ""
        out += [f"{model} — {device}",
                table.to_markdown(index=False, tablefmt="simple", disable_numparse=True), ""]
    return "\n".join(out + [f"note: {n}" for n in row_notes(df)])


def sweep_of_runs(df: pd.DataFrame) -> dict | None:
    """``Study.sweep`` ({"entry": name, "parts": {part: entry}}) as runs.csv records it."""
    swept = df[df["sweep_of"] != ""]
    if swept.empty:
        return None
    parts = dict(zip(swept["parts"], swept["entry"]))
    return {"entry": swept["sweep_of"].iloc[0], "parts": parts}


def sweep_matrix(df: pd.DataFrame, sweep: dict):
    """(splits, {(model, device): [(part, {split: (ΔWER, lo, hi, significant)}, linear size
    red.)]}) for the sweep's parts, then "all" (the unrestricted entry) when it was run."""
    order = list(sweep["parts"].items()) + [("all", sweep["entry"])]
    ok = plain(df)
    ok = ok[(ok["status"] == "ok") & ok["dwer"].notna()]
    splits = split_order(set(ok["split"]))
    out = {}
    for (model, device), g in ok.groupby(["model", "device"], sort=True):
        lines = []
        for part, entry in order:
            e = g[g["entry"] == entry]
            if not e.empty:
                lines.append((part, {r.split: (r.dwer, r.dwer_lo, r.dwer_hi, bool(r.dwer_significant))
                                     for r in e.itertuples()}, e["linear_size_reduction"].iloc[0]))
        if lines:
            out[(model, device)] = lines
    return splits, out
