"""Significance and robustness statistics computed from the per-utterance edit counts.

Every ``<split>.score.json`` stores, per utterance, the normalized reference and hypothesis,
the word and character edit counts (hits / substitutions / deletions / insertions / n) and
the speaker. From those alone this module derives:

* a **paired speaker bootstrap** of ΔWER / ΔCER of an entry against the fp32 baseline of the
  same model, device and split: speakers are resampled with replacement and keep all their
  utterances; in each resample the corpus-level rate of either system is
  Σ errors / Σ reference length over the drawn speakers, and the difference of the two is
  taken on the *same* draw (paired). The 95 % interval is the percentile interval of the
  resampled differences. Resampling speakers rather than utterances respects the
  dependence between utterances of one speaker (LibriSpeech test sets have 40/33 speakers;
  utterances are not independent draws).
* an **unpaired speaker bootstrap** of the difference of one system's rate on two splits
  with disjoint speakers (test-other − test-clean): each split is resampled independently.
* the **no-regression rate**: share of utterances whose word error count does not grow
  against fp32;
* S / D / I totals;
* a **hallucination check** per hypothesis: longer than ``ratio`` × the reference in
  normalized words, or a repeated n-gram loop that the reference does not have.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from . import PipelineError
from .records import Score
from .schema import schema_default

# config `bootstrap:`; its defaults are written in the schema only
DEFAULT_RESAMPLES = schema_default("bootstrap", "resamples")
DEFAULT_SEED = schema_default("bootstrap", "seed")
UNITS = ("words", "chars")
# what the functions below call a score: a Score record, or scoring.score_rows' dict
Scored = Score | dict


def _errors(c: dict) -> int:
    return c["substitutions"] + c["deletions"] + c["insertions"]


# --------------------------------------------------------------------------- pairing


def utterances(score: Scored) -> list[dict] | None:
    """A score's per-utterance list (edit counts, speaker, normalized texts)."""
    return score.utterances if isinstance(score, Score) else score.get("utterances")


def utterances_by_id(score: Scored, what: str = "score") -> dict[str, dict]:
    utts = utterances(score)
    if not isinstance(utts, list):
        raise PipelineError(f"{what}: no per-utterance 'utterances' list (re-run its score step)")
    out = {}
    for u in utts:
        if u["id"] in out:
            raise PipelineError(f"{what}: utterance {u['id']} is scored twice")
        out[u["id"]] = u
    return out


def pair(base: Scored, other: Scored, what: str = "") -> list[tuple[dict, dict]]:
    """(baseline utterance, entry utterance) pairs, matched by utterance id.

    Both runs must have scored exactly the same utterances against the same references;
    anything else is a PipelineError naming the first differing ids.
    """
    a, b = utterances_by_id(base, f"{what} baseline"), utterances_by_id(other, what)
    if not a or not b:
        raise PipelineError(f"{what or 'pairing'}: nothing to pair "
                            f"({len(a)} baseline and {len(b)} entry utterances)")
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise PipelineError(
            f"{what or 'pairing'}: baseline and entry scored different utterances "
            f"({len(only_a)} only in the baseline, e.g. {only_a[:3]}; {len(only_b)} only in "
            f"the entry, e.g. {only_b[:3]}); run both with the same limit/exclusions")
    pairs = []
    for uid in sorted(a):
        ua, ub = a[uid], b[uid]
        for unit in UNITS:
            if ua[unit]["n"] != ub[unit]["n"]:
                raise PipelineError(f"{what or 'pairing'}: utterance {uid} has reference "
                                    f"length {ua[unit]['n']} vs {ub[unit]['n']} {unit}: "
                                    "the two runs used different references")
        if ua.get("speaker") != ub.get("speaker"):
            raise PipelineError(f"{what or 'pairing'}: utterance {uid} has speaker "
                                f"{ua.get('speaker')!r} vs {ub.get('speaker')!r}")
        pairs.append((ua, ub))
    return pairs


def _speaker_totals(utts_a, utts_b, unit: str):
    """Per-speaker Σ errors of A, Σ errors of B, Σ reference length (aligned arrays)."""
    tot = defaultdict(lambda: [0, 0, 0])
    for ua, ub in zip(utts_a, utts_b):
        spk = ua.get("speaker")
        if spk is None:
            raise PipelineError(f"utterance {ua['id']} has no speaker: cannot resample speakers")
        t = tot[spk]
        t[0] += _errors(ua[unit])
        t[1] += _errors(ub[unit])
        t[2] += ua[unit]["n"]
    arr = np.array([tot[s] for s in sorted(tot)], dtype=np.float64).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def speaker_weights(n_speakers: int, n_resamples: int, seed: int) -> np.ndarray:
    """``[n_resamples, n_speakers]`` draw counts: each row resamples speakers with replacement."""
    if n_speakers < 1:
        raise PipelineError("bootstrap: no speakers to resample")
    if n_resamples < 1:
        raise PipelineError(f"bootstrap: n_resamples must be ≥ 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    p = np.full(n_speakers, 1.0 / n_speakers)
    return rng.multinomial(n_speakers, p, size=n_resamples).astype(np.float64)


@dataclass(frozen=True)
class Interval:
    estimate: float  # on the full sample
    low: float
    high: float
    n_speakers: int
    n_resamples: int
    seed: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self, prefix: str) -> dict:
        return {f"{prefix}": self.estimate, f"{prefix}_lo": self.low, f"{prefix}_hi": self.high}


def _percentile_interval(estimate, samples, alpha, n_spk, n_res, seed) -> Interval:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        raise PipelineError("bootstrap: every resample had an empty reference")
    lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(lo), float(hi), n_spk, n_res, seed)


def paired_delta(base: Scored, other: Scored, unit: str = "words", *,
                 n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                 alpha: float = 0.05, what: str = "") -> Interval:
    """ΔWER (unit='words') or ΔCER (unit='chars') of ``other`` − ``base`` in points (%).

    Paired speaker bootstrap on two score dicts (see the module docstring).
    """
    pairs = pair(base, other, what)
    return paired_delta_pairs(pairs, unit, n_resamples=n_resamples, seed=seed, alpha=alpha)


def paired_delta_pairs(pairs, unit="words", *, n_resamples=DEFAULT_RESAMPLES,
                       seed=DEFAULT_SEED, alpha=0.05) -> Interval:
    if unit not in UNITS:
        raise PipelineError(f"bootstrap: unit must be one of {UNITS}, got {unit!r}")
    ea, eb, n = _speaker_totals([p[0] for p in pairs], [p[1] for p in pairs], unit)
    if n.sum() == 0:
        raise PipelineError("bootstrap: the references are empty")
    estimate = 100.0 * (eb.sum() - ea.sum()) / n.sum()
    w = speaker_weights(len(n), n_resamples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = 100.0 * (w @ (eb - ea)) / (w @ n)
    return _percentile_interval(estimate, samples, alpha, len(n), n_resamples, seed)


def rate_interval(score: Scored, unit: str = "words", *, n_resamples=DEFAULT_RESAMPLES,
                  seed=DEFAULT_SEED, alpha=0.05) -> Interval:
    """Speaker-bootstrap interval of one run's corpus WER/CER (%)."""
    utts = list(utterances_by_id(score).values())
    if not utts:
        raise PipelineError("bootstrap: the score has no utterances")
    _, e, n = _speaker_totals(utts, utts, unit)
    w = speaker_weights(len(n), n_resamples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = 100.0 * (w @ e) / (w @ n)
    return _percentile_interval(100.0 * e.sum() / n.sum(), samples, alpha, len(n),
                                n_resamples, seed)


def split_difference(first: Scored, second: Scored, unit: str = "words", *,
                     n_resamples=DEFAULT_RESAMPLES, seed=DEFAULT_SEED, alpha=0.05) -> Interval:
    """Rate on ``second`` − rate on ``first`` for one system on two speaker-disjoint splits.

    The splits are resampled independently (unpaired): each resample draws speakers of
    each split with replacement, with independent seeds derived from ``seed``.
    """
    parts = []
    for k, score in enumerate((first, second)):
        utts = list(utterances_by_id(score).values())
        if not utts:
            raise PipelineError("bootstrap: a split has no utterances")
        _, e, n = _speaker_totals(utts, utts, unit)
        w = speaker_weights(len(n), n_resamples, seed * 2 + k)
        parts.append((e, n, w))
    spk_a = {u.get("speaker") for u in utterances(first)}
    spk_b = {u.get("speaker") for u in utterances(second)}
    if spk_a & spk_b:
        raise PipelineError(f"split difference: the splits share speakers "
                            f"{sorted(spk_a & spk_b)[:3]}; use the paired bootstrap instead")
    (e1, n1, w1), (e2, n2, w2) = parts
    estimate = 100.0 * (e2.sum() / n2.sum() - e1.sum() / n1.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = 100.0 * ((w2 @ e2) / (w2 @ n2) - (w1 @ e1) / (w1 @ n1))
    return _percentile_interval(estimate, samples, alpha, len(n1) + len(n2), n_resamples, seed)


# --------------------------------------------------------------------------- hallucinations


def repeated_ngram(words: list[str], min_repeats: int = 4, max_n: int = 10) -> tuple[int, int]:
    """Longest run of one n-gram repeated back to back: (n, repeats); (0, 0) if none.

    Only runs of at least ``min_repeats`` consecutive copies count (``a b a b a b a b`` is
    the bigram ``a b`` four times).
    """
    best = (0, 0)
    L = len(words)
    for n in range(1, max_n + 1):
        for i in range(0, L - n * min_repeats + 1):
            gram = words[i:i + n]
            r = 1
            while words[i + r * n:i + (r + 1) * n] == gram:
                r += 1
            if r >= min_repeats and r * n > best[0] * best[1]:
                best = (n, r)
    return best


@dataclass(frozen=True)
class Hallucination:
    too_long: bool
    loop: bool

    @property
    def flagged(self) -> bool:
        return self.too_long or self.loop


TOO_LONG = 1.5  # a hypothesis this many times the reference's words is a hallucination


def hallucination(ref_norm: str, hyp_norm: str, *, ratio: float = TOO_LONG,
                  min_repeats: int = 4, max_n: int = 10) -> Hallucination:
    """Flag a hypothesis that is > ``ratio`` × the reference in normalized words, or that
    loops on an n-gram (≥ ``min_repeats`` consecutive copies) more than the reference does."""
    ref, hyp = ref_norm.split(), hyp_norm.split()
    too_long = len(hyp) > ratio * max(len(ref), 1)
    n_h, r_h = repeated_ngram(hyp, min_repeats, max_n)
    loop = False
    if r_h:
        n_r, r_r = repeated_ngram(ref, min_repeats, max_n)
        loop = r_h * n_h > r_r * n_r
    return Hallucination(too_long, loop)


# --------------------------------------------------------------------------- per entry


def edit_totals(score: Scored, unit: str = "words") -> dict:
    utts = utterances(score)
    return {k: int(sum(u[unit][k] for u in utts))
            for k in ("substitutions", "deletions", "insertions", "n")}


HALLUCINATION_FIELDS = ("hallucinations", "hallucination_rate", "hallucination_errors")


def hallucination_stats(score: Scored, **kw) -> dict:
    utts = utterances(score)
    flags = [hallucination(u["ref_norm"], u["hyp_norm"], **kw) for u in utts]
    n = len(flags)
    return {
        "hallucinations": sum(f.flagged for f in flags),
        "hallucination_rate": 100.0 * sum(f.flagged for f in flags) / n if n else float("nan"),
        # word errors inside the flagged hypotheses: one loop can hold most of an entry's errors
        "hallucination_errors": sum(_errors(u["words"]) for u, f in zip(utts, flags) if f.flagged),
        "too_long": sum(f.too_long for f in flags),
        "loops": sum(f.loop for f in flags),
        "hallucinated_ids": [u["id"] for u, f in zip(utts, flags) if f.flagged],
    }


def no_regression_rate(pairs) -> float:
    """% of utterances whose word error count is not larger than the baseline's."""
    if not pairs:
        raise PipelineError("no-regression rate: nothing to pair")
    ok = sum(_errors(b["words"]) <= _errors(a["words"]) for a, b in pairs)
    return 100.0 * ok / len(pairs)


def entry_stats(base: Scored, score: Scored, *, n_resamples=DEFAULT_RESAMPLES, seed=DEFAULT_SEED,
                alpha=0.05, what: str = "") -> dict:
    """All per-entry statistics of ``score`` against ``base`` (fp32, same model/device/split).

    Flat dict, ready for a CSV row: dwer, dwer_lo, dwer_hi, dcer(_lo/_hi), dwer_significant,
    no_regression, S/D/I, hallucination counts and rate, bootstrap settings.
    """
    pairs = pair(base, score, what)
    dw = paired_delta_pairs(pairs, "words", n_resamples=n_resamples, seed=seed, alpha=alpha)
    dc = paired_delta_pairs(pairs, "chars", n_resamples=n_resamples, seed=seed, alpha=alpha)
    tot = edit_totals(score)
    hal = hallucination_stats(score)
    return {
        **dw.as_dict("dwer"), "dwer_significant": dw.excludes_zero,
        **dc.as_dict("dcer"), "dcer_significant": dc.excludes_zero,
        "no_regression": no_regression_rate(pairs),
        "sub": tot["substitutions"], "del": tot["deletions"], "ins": tot["insertions"],
        "ref_words": tot["n"],
        **{k: hal[k] for k in HALLUCINATION_FIELDS},
        "speakers": dw.n_speakers, "bootstrap_resamples": n_resamples, "bootstrap_seed": seed,
        "ci_level": 100 * (1 - alpha),
    }


__all__ = [
    "Interval", "Hallucination", "pair", "paired_delta", "paired_delta_pairs", "rate_interval",
    "split_difference", "repeated_ngram", "hallucination", "hallucination_stats",
    "HALLUCINATION_FIELDS", "TOO_LONG",
    "no_regression_rate", "entry_stats", "edit_totals", "speaker_weights",
]
