"""Scoring on known strings, including what the Whisper English normalizer does."""

import pytest
from test_records import quant_meta

from whisper_ptq.scoring import normalize, score_rows, score_utterance, size_reduction


def test_normalizer_maps_whisper_output_to_librispeech_style():
    assert normalize("Mr. Quilter's colour, isn't it?") == normalize("MISTER QUILTER'S COLOR ISN'T IT")
    assert normalize(" Twenty-five dollars.") == normalize("$25")
    assert normalize("Hello, WORLD!") == "hello world"


def test_edit_counts_on_known_strings():
    u = score_utterance("THE CAT SAT ON THE MAT", "The cat sat on a mat, today.")
    assert u["words"] == {"hits": 5, "substitutions": 1, "deletions": 0, "insertions": 1, "n": 6}
    assert u["chars"]["n"] == len("the cat sat on the mat")


def test_corpus_rates_pool_edits_not_utterance_averages():
    rows = [
        {"id": "1-1-0", "speaker": "1", "reference": "A B C D", "hypothesis": "a b c d"},
        {"id": "2-1-0", "speaker": "2", "reference": "E F", "hypothesis": "e"},
    ]
    s = score_rows(rows)
    assert s["wer"] == pytest.approx(100 * 1 / 6)  # one deletion over six reference words
    assert s["words"]["deletions"] == 1 and len(s["utterances"]) == 2
    assert s["utterances"][1]["speaker"] == "2"
    assert s["cer"] == pytest.approx(100 * 2 / (7 + 3))  # "e f" -> "e": deletes " " and "f"


def test_empty_hypothesis_counts_every_word_deleted():
    s = score_rows([{"id": "a", "reference": "RED GREEN BLUE", "hypothesis": ""}])
    assert s["wer"] == 100.0 and s["words"]["deletions"] == 3


def test_size_reduction():
    fp32 = quant_meta("fp32", bytes_on_disk=1000, linear_bytes=800, fp32_linear_bytes=800)
    q = quant_meta("int8", bytes_on_disk=400, linear_bytes=200)
    r = size_reduction(q, fp32)
    assert r["size_reduction"] == pytest.approx(60.0)
    assert r["linear_size_reduction"] == pytest.approx(75.0)


def test_normalizer_joins_spoken_numbers_like_whisper_does():
    # a real property of the Whisper normalizer that affects word counts
    assert normalize("ONE TWO THREE") == "123"
