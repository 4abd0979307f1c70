"""WER / CER after the Whisper English text normalizer, with per-utterance edit counts."""

from __future__ import annotations

from functools import lru_cache

EDIT_KEYS = ("hits", "substitutions", "deletions", "insertions")


@lru_cache(maxsize=1)
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return _normalizer()(text)


def _counts(out) -> dict:
    return {k: int(getattr(out, k)) for k in EDIT_KEYS}


def score_utterance(reference: str, hypothesis: str) -> dict:
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    words = _counts(jiwer.process_words(ref, hyp))
    chars = _counts(jiwer.process_characters(ref, hyp))
    return {
        "ref_norm": ref,
        "hyp_norm": hyp,
        "words": {**words, "n": words["hits"] + words["substitutions"] + words["deletions"]},
        "chars": {**chars, "n": chars["hits"] + chars["substitutions"] + chars["deletions"]},
    }


def errors(counts: dict) -> int:
    return counts["substitutions"] + counts["deletions"] + counts["insertions"]


def aggregate(utts: list[dict], unit: str) -> dict:
    total = {k: sum(u[unit][k] for u in utts) for k in (*EDIT_KEYS, "n")}
    total["rate"] = 100.0 * errors(total) / total["n"] if total["n"] else float("nan")
    return total


def score_rows(rows: list[dict]) -> dict:
    """Corpus WER/CER (in %) = Σ edits / Σ reference length, and per-utterance details."""
    utts = []
    for r in rows:
        u = score_utterance(r["reference"], r["hypothesis"])
        utts.append({"id": r["id"], "speaker": r.get("speaker"), **u})
    words, chars = aggregate(utts, "words"), aggregate(utts, "chars")
    return {"wer": words["rate"], "cer": chars["rate"], "words": words, "chars": chars,
            "utterances": utts}


def size_reduction(meta: dict, fp32_meta: dict) -> dict:
    """1 − bytes / fp32 bytes, for the whole checkpoint and for the linear layers alone (%)."""
    return {
        "bytes_on_disk": meta["bytes_on_disk"],
        "fp32_bytes_on_disk": fp32_meta["bytes_on_disk"],
        "size_reduction": 100.0 * (1 - meta["bytes_on_disk"] / fp32_meta["bytes_on_disk"]),
        "linear_size_reduction": 100.0 * (1 - meta["linear_bytes"] / fp32_meta["fp32_linear_bytes"]),
    }
