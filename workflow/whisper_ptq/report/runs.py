"""The tidy runs table (``runs.csv``): one row per model × entry × device × split, with the
statistics against fp32 (``whisper_ptq.stats``). Tables and figures are drawn from this table
alone (``read_runs``), so ``replot`` can redraw them from a committed runs.csv.
"""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd

from .. import PipelineError
from ..io import atomic_path
from ..noise import parse_split
from ..records import SCORE_TIMING, Score
from ..stats import (DEFAULT_RESAMPLES, DEFAULT_SEED, HALLUCINATION_FIELDS, edit_totals,
                     entry_stats, hallucination_stats, rate_interval, split_difference)

BASELINE = "fp32"
CLEAN, OTHER = "test-clean", "test-other"
CSV_FIELDS = [
    "model", "entry", "device", "split", "status", "library", "weights", "activations",
    "act_mode", "symmetric", "granularity", "group_size", "unquantized", "wer", "cer",
    "utterances", "audio_seconds", "compute_seconds", "rtf", "rtfx", "threads", "batch_size",
    "size_reduction", "linear_size_reduction", "bytes_on_disk", "fp32_bytes_on_disk",
    # against the fp32 baseline of the same model/device/split (paired speaker bootstrap)
    "dwer", "dwer_lo", "dwer_hi", "dwer_significant", "dcer", "dcer_lo", "dcer_hi",
    "dcer_significant", "no_regression", "sub", "del", "ins", "ref_words", *HALLUCINATION_FIELDS,
    "speakers", "bootstrap_resamples", "bootstrap_seed", "ci_level",
    # speaker-bootstrap interval of this run's own WER (noise figure)
    "wer_lo", "wer_hi",
    # WER test-other − test-clean of this model/device/entry with its unpaired speaker-bootstrap
    # interval (Fig. 1), on the rows of both splits
    "other_minus_clean", "other_minus_clean_lo", "other_minus_clean_hi",
    # noisy derived splits
    "base_split", "noise", "snr_db",
    # the model parts an entry quantizes ("all" or e.g. "encoder.ffn"; whisper_ptq.parts)
    "parts",
    # the entry a sensitivity-sweep entry restricts (config `sweep:`), else empty
    "sweep_of",
    # where the transcription ran (full provenance: the score JSON); mixed_hardware names
    # the CPU / GPU models when the run's shards did not all run on the same kind
    "git_commit", "git_dirty", "slurm_job_id", "hostname", "cpu_model", "gpu", "loadavg_1m",
    "shards", "mixed_hardware",
    # encoder / decoder seconds, peak memory and the latency regime's p50 / p90 (records.Score)
    *SCORE_TIMING,
]
BOOL_FIELDS = ("dwer_significant", "dcer_significant", "symmetric", "git_dirty")
TEXT_FIELDS = ("model", "entry", "device", "split", "status", "library", "weights",
               "activations", "act_mode", "granularity", "unquantized", "base_split", "noise",
               "parts", "sweep_of", "git_commit", "slurm_job_id", "hostname", "cpu_model", "gpu",
               "mixed_hardware")


def row_from_score(score: Score) -> dict:
    facts = score.facts
    row = {k: getattr(score, k, None) for k in CSV_FIELDS}
    row.update({k: facts.get(k) for k in facts if k in CSV_FIELDS})
    row["unquantized"] = "; ".join(facts.get("unquantized", []))
    row["utterances"] = score.n_utterances
    row["status"] = "ok"
    row["parts"] = facts.get("parts") or "all"  # libraries without `parts` quantize every part
    name = parse_split(score.split)
    row.update(base_split=name.base, noise=name.kind, snr_db=name.snr_db)
    prov = score.provenance.get("transcribe") or {}
    row.update({k: prov.get(k) for k in ("git_commit", "git_dirty", "slurm_job_id", "hostname", "gpu")})
    row["cpu_model"] = (prov.get("cpu") or {}).get("model")
    row["loadavg_1m"] = (prov.get("loadavg") or [None])[0]
    return row


def unsupported_rows(unsupported: list[dict]) -> list[dict]:
    return [{**{k: None for k in CSV_FIELDS}, **u, "status": f"unsupported: {u['reason']}"}
            for u in unsupported]


def load_scores(score_paths):
    scores, rows = {}, []
    for p in score_paths:
        s = Score.read(p)
        key = (s.model, s.device, s.entry, s.split)
        if key in scores:
            raise PipelineError(f"score {p}: {'/'.join(key)} is given twice")
        scores[key] = s
        rows.append(row_from_score(s))
    return scores, rows


def add_statistics(rows: list[dict], scores: dict, *, n_resamples=DEFAULT_RESAMPLES,
                   seed=DEFAULT_SEED) -> list[str]:
    """Fill the bootstrap / no-regression / S/D/I / hallucination / interval columns of every
    ok row.

    ``scores`` maps (model, device, entry, split) → Score. Rows without an fp32
    baseline of the same model/device/split keep empty Δ columns; the returned notes say so.
    """
    boot = {"n_resamples": n_resamples, "seed": seed}
    notes = []
    for r in rows:
        if r["status"] != "ok":
            continue
        key = (r["model"], r["device"], r["entry"])
        score = scores[(*key, r["split"])]
        iv = rate_interval(score, **boot)
        r.update(wer_lo=iv.low, wer_hi=iv.high)
        if (*key, CLEAN) in scores and (*key, OTHER) in scores:
            d = split_difference(scores[(*key, CLEAN)], scores[(*key, OTHER)], **boot)
            r.update(d.as_dict("other_minus_clean"))
        base = scores.get((r["model"], r["device"], BASELINE, r["split"]))
        if base is None:
            hal = hallucination_stats(score)
            r.update({k: hal[k] for k in HALLUCINATION_FIELDS})
            tot = edit_totals(score)
            r.update({"sub": tot["substitutions"], "del": tot["deletions"],
                      "ins": tot["insertions"], "ref_words": tot["n"]})
            notes.append(f"{r['model']}/{r['device']}/{r['entry']}/{r['split']}: no fp32 "
                         "baseline run to compare with")
            continue
        r.update(entry_stats(base, score, **boot,
                             what=f"{r['model']}/{r['device']}/{r['entry']}/{r['split']}"))
    return notes


def write_csv(rows: list[dict], path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def read_runs(path) -> pd.DataFrame:
    """runs.csv as a DataFrame in its row order; columns a CSV from an older version lacks
    are added empty (the figures then leave out what needs them)."""
    df = pd.read_csv(path, dtype={k: "string" for k in TEXT_FIELDS}, keep_default_na=False,
                     na_values=[""])
    missing = [col for col in CSV_FIELDS if col not in df]
    for col in missing:
        df[col] = pd.NA if col in TEXT_FIELDS else np.nan
    for col in TEXT_FIELDS:
        df[col] = df[col].astype("string").fillna("")
    for col in BOOL_FIELDS:
        df[col] = df[col].astype("string").fillna("").str.lower().eq("true")
    if "sweep_of" in missing:
        df["sweep_of"] = infer_sweep_of(df)
    return df.reset_index(drop=True)


def infer_sweep_of(df: pd.DataFrame) -> pd.Series:
    """For runs.csv files without ``sweep_of``: a sweep entry is named ``<entry>+<part>``
    (``config.Study``), restricts ``parts`` to that part, and ``<entry>`` is an entry too."""
    entries = set(df["entry"])

    def of(entry, parts):
        base, sep, part = entry.rpartition("+")
        return base if sep and base in entries and part == parts else ""

    return pd.Series([of(e, p) for e, p in zip(df["entry"], df["parts"])], index=df.index,
                     dtype="string")


def with_collapse(df: pd.DataFrame, factor: float) -> pd.DataFrame:
    """Adds ``fp32_wer`` (same model/device/split) and ``collapsed`` (WER > factor × fp32's)."""
    ok = df[df["status"] == "ok"]
    base = ok[ok["entry"] == BASELINE].set_index(["model", "device", "split"])["wer"]
    keys = pd.MultiIndex.from_frame(df[["model", "device", "split"]])
    out = df.copy()
    out["fp32_wer"] = base.reindex(keys).to_numpy()
    out["collapsed"] = (out["status"] == "ok") & (out["wer"] > factor * out["fp32_wer"])
    return out
