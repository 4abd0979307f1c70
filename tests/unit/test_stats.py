"""Speaker bootstrap, no-regression rate, S/D/I and the hallucination detector (toy data)."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_ptq import PipelineError
from whisper_ptq import stats


def utt(uid, spk, errors, n, *, sub=None, dele=0, ins=0, ref="", hyp=""):
    """One scored utterance; ``errors`` all substitutions unless S/D/I are given."""
    sub = errors - dele - ins if sub is None else sub
    counts = {"hits": n - sub - dele, "substitutions": sub, "deletions": dele,
              "insertions": ins, "n": n}
    return {"id": uid, "speaker": spk, "words": counts, "chars": dict(counts, n=n * 5,
            hits=n * 5 - sub - dele), "ref_norm": ref or " ".join(["w"] * n),
            "hyp_norm": hyp or " ".join(["w"] * n)}


def score(utts):
    return {"utterances": utts}


def simulate(rng, n_spk=60, per_spk=5, p_delta=0.03):
    """Speakers with their own base error rate; the entry adds ``p_delta`` to each word's
    error probability, so the expected ΔWER is 100·p_delta points."""
    base, other = [], []
    for s in range(n_spk):
        p = rng.uniform(0.02, 0.25)  # strong speaker effect: utterances are clustered
        for k in range(per_spk):
            n = int(rng.integers(10, 40))
            uid = f"{s}-{k}"
            base.append(utt(uid, str(s), int(rng.binomial(n, p)), n))
            other.append(utt(uid, str(s), int(rng.binomial(n, p + p_delta)), n))
    return score(base), score(other)


def test_interval_contains_the_true_difference_and_has_nominal_coverage():
    rng = np.random.default_rng(123)
    true = 3.0
    hits, excl_zero = 0, 0
    trials = 150
    for t in range(trials):
        base, other = simulate(rng)
        iv = stats.paired_delta(base, other, n_resamples=1000, seed=t)
        assert iv.low <= iv.estimate <= iv.high
        hits += iv.low <= true <= iv.high
        excl_zero += iv.low > 0
    coverage = hits / trials
    # a 95 % interval: coverage near 0.95 (binomial sd over 150 trials ≈ 0.018)
    assert 0.88 <= coverage <= 0.995, coverage
    # and the effect (3 points on ~3700 words per set) is detected most of the time
    assert excl_zero / trials > 0.8


def test_no_difference_gives_interval_around_zero():
    rng = np.random.default_rng(7)
    base, other = simulate(rng, p_delta=0.0)
    iv = stats.paired_delta(base, other, n_resamples=2000, seed=1)
    assert iv.low < 0 < iv.high


def test_speaker_blocks_are_kept_together():
    # Within each speaker, one utterance gains exactly the errors another one loses (same
    # length), so each speaker's ΔWER is 0. Resampling whole speakers can then only give 0;
    # resampling utterances on their own would not.
    utts_a, utts_b = [], []
    for s in range(20):
        d = s % 4 + 1
        for k, sign in enumerate((+1, -1)):
            uid = f"{s}-{k}"
            utts_a.append(utt(uid, f"spk{s}", 5, 20))
            utts_b.append(utt(uid, f"spk{s}", 5 + sign * d, 20))
    iv = stats.paired_delta(score(utts_a), score(utts_b), n_resamples=500, seed=0)
    assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)
    assert iv.n_speakers == 20

    # the same data with every utterance its own "speaker": the interval opens up
    relabel = lambda us: [dict(u, speaker=u["id"]) for u in us]
    iv_utt = stats.paired_delta(score(relabel(utts_a)), score(relabel(utts_b)),
                                n_resamples=500, seed=0)
    assert iv_utt.n_speakers == 40
    assert iv_utt.high - iv_utt.low > 1.0


def test_speaker_weights_resample_whole_speakers():
    w = stats.speaker_weights(7, 300, seed=3)
    assert w.shape == (300, 7)
    assert np.all(w.sum(axis=1) == 7)  # each resample draws as many speakers as there are
    assert (w == 0).any() and (w > 1).any()  # with replacement


def test_seed_reproduces_and_changes_the_resamples():
    base, other = simulate(np.random.default_rng(0))
    a = stats.paired_delta(base, other, n_resamples=1000, seed=42)
    b = stats.paired_delta(base, other, n_resamples=1000, seed=42)
    c = stats.paired_delta(base, other, n_resamples=1000, seed=43)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.estimate == c.estimate


def test_pairing_is_by_id_not_by_order():
    base, other = simulate(np.random.default_rng(1), n_spk=10)
    shuffled = score(list(reversed(other["utterances"])))
    assert stats.paired_delta(base, other, seed=0) == stats.paired_delta(base, shuffled, seed=0)


def test_empty_pairing_is_a_clear_error():
    with pytest.raises(PipelineError, match="nothing to pair"):
        stats.paired_delta(score([]), score([utt("a", "s", 1, 5)]))
    with pytest.raises(PipelineError, match="'utterances'"):
        stats.paired_delta({"wer": 1.0}, score([utt("a", "s", 1, 5)]))


def test_mismatched_pairing_is_a_clear_error():
    a = score([utt("a", "s", 1, 5), utt("b", "s", 1, 5)])
    b = score([utt("a", "s", 1, 5), utt("c", "s", 1, 5)])
    with pytest.raises(PipelineError, match=r"different utterances.*\['b'\].*\['c'\]"):
        stats.paired_delta(a, b, what="base/cpu/x/test-clean")
    c = score([utt("a", "s", 1, 5), utt("b", "s", 1, 6)])
    with pytest.raises(PipelineError, match="different references"):
        stats.paired_delta(a, c)
    with pytest.raises(PipelineError, match="scored twice"):
        stats.paired_delta(a, score([utt("a", "s", 1, 5), utt("a", "s", 1, 5)]))


def test_entry_stats_counts_and_no_regression():
    base = score([utt("a", "s1", 2, 10), utt("b", "s1", 0, 10), utt("c", "s2", 3, 10),
                  utt("d", "s2", 1, 10)])
    other = score([utt("a", "s1", 1, 10, sub=0, dele=1), utt("b", "s1", 2, 10, sub=1, ins=1),
                   utt("c", "s2", 3, 10), utt("d", "s2", 1, 10, sub=0, ins=1)])
    st = stats.entry_stats(base, other, n_resamples=200, seed=0)
    # word errors: base 2,0,3,1 -> other 1,2,3,1: only 'b' regresses
    assert st["no_regression"] == 75.0
    assert (st["sub"], st["del"], st["ins"]) == (4, 1, 2)
    assert st["ref_words"] == 40
    assert st["dwer"] == pytest.approx(100 * (7 - 6) / 40)
    assert st["speakers"] == 2
    same = stats.entry_stats(base, base, n_resamples=200, seed=0)
    assert (same["dwer"], same["dwer_lo"], same["dwer_hi"]) == (0.0, 0.0, 0.0)
    assert same["no_regression"] == 100.0 and not same["dwer_significant"]


def test_entry_stats_on_real_scoring_output():
    from whisper_ptq.scoring import score_rows

    refs = ["HE HOPED THERE WOULD BE STEW FOR DINNER", "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM",
            "AFTER EARLY NIGHTFALL THE YELLOW LAMPS WOULD LIGHT UP"]
    rows = lambda hyps: [{"id": f"1-1-{i}", "speaker": str(i % 2), "reference": r,
                          "hypothesis": h} for i, (r, h) in enumerate(zip(refs, hyps))]
    base = score_rows(rows(["He hoped there would be stew for dinner.",
                            "Stuff it into you, his belly counselled him.",
                            "After early nightfall the yellow lamps would light up."]))
    bad = score_rows(rows(["He hoped there would be stew for dinner.",
                           "Stuff it into you his belly.",
                           "after early nightfall the the the the the the the the the the"]))
    st = stats.entry_stats(base, bad, n_resamples=200, seed=0)
    assert base["wer"] == 0.0
    assert st["dwer"] == pytest.approx(bad["wer"])
    assert st["no_regression"] == pytest.approx(100 / 3)
    assert st["hallucinations"] == 1  # the loop; the shortened one is not a hallucination
    assert st["hallucination_errors"] == 9  # the loop alone: 5 substitutions + 4 insertions


def test_split_difference_is_unpaired_and_needs_disjoint_speakers():
    rng = np.random.default_rng(5)
    clean, _ = simulate(rng, p_delta=0.0)
    other, _ = simulate(rng, p_delta=0.0)
    other = score([dict(u, speaker="o" + u["speaker"], id="o" + u["id"])
                   for u in other["utterances"]])
    iv = stats.split_difference(clean, other, n_resamples=500, seed=0)
    assert iv.low < iv.estimate < iv.high
    assert iv.n_speakers == 120
    with pytest.raises(PipelineError, match="share speakers"):
        stats.split_difference(clean, clean)


@pytest.mark.parametrize("hyp, too_long, loop", [
    ("the cat sat on the mat", False, False),
    ("the cat sat on the mat and then the dog sat on it too", True, False),
    ("the cat sat sat sat sat on the mat", False, True),            # unigram × 4
    ("the cat sat on the mat on the mat on the mat on the mat", True, True),  # bigram-ish loop
    ("no no no", False, False),                                     # 3 copies: natural speech
    ("", False, False),
])
def test_hallucination_detector(hyp, too_long, loop):
    h = stats.hallucination("the cat sat on the mat", hyp)
    assert (h.too_long, h.loop) == (too_long, loop)
    assert h.flagged == (too_long or loop)


def test_repetition_in_the_reference_is_not_a_loop():
    ref = "no no no no no i said"
    assert not stats.hallucination(ref, ref).loop
    assert stats.hallucination(ref, "no no no no no no no no no i said").loop


def test_repeated_ngram_finds_longest_loop():
    words = "i am here i am here i am here i am here now".split()
    assert stats.repeated_ngram(words) == (3, 4)
    assert stats.repeated_ngram("a b c d".split()) == (0, 0)
    assert stats.repeated_ngram(["x"] * 10) == (1, 10)
