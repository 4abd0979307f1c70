"""Timing protocol of the transcribe step: warm-up, encoder/decoder split, memory, regimes."""

import json
import time

import numpy as np
import pytest
import torch

from whisper_ptq.io import write_jsonl
from whisper_ptq.modeling import load_fp32
from whisper_ptq.decode import run


DECODING = {"batch_size": 2, "max_new_tokens": 8}


def slow_encoder(model, monkeypatch, seconds, key=lambda feats: None):
    """An encoder call takes ``seconds`` longer, on the clock the timing reads, the first time
    its ``key`` is seen (default: one key, so the first call only). Returns the keys of every
    call, in order."""
    import whisper_ptq.decode as tr

    encoder, calls, offset = model.model.encoder, [], [0.0]
    original = encoder.forward

    class Clock:
        @staticmethod
        def perf_counter():
            return time.perf_counter() + offset[0]

    def forward(input_features, *args, **kwargs):
        k = key(input_features)
        if k not in calls:
            offset[0] += seconds
        calls.append(k)
        return original(input_features, *args, **kwargs)

    monkeypatch.setattr(tr, "time", Clock)
    encoder.forward = forward
    return calls


@pytest.mark.parametrize("warmup", [0, 1])
def test_warmup_batch_is_run_but_not_timed(model_and_tokenizer, random_features, warmup, monkeypatch):
    model, tok = model_and_tokenizer
    calls = slow_encoder(model, monkeypatch, 1000.0)
    rows, t = run(model, tok, *random_features, "cpu", DECODING, timing={"warmup_batches": warmup},
                  progress=False)
    assert len(rows) == 6 and t["batches"] == 3 and t["warmup_batches"] == warmup
    assert len(calls) == 3 + warmup
    assert (t["encoder_seconds"] >= 1000) == (warmup == 0)
    assert (t["compute_seconds"] >= 1000) == (warmup == 0)


def test_a_smaller_last_batch_is_warmed_up_too(model_and_tokenizer, random_features, monkeypatch):
    """6 utterances at batch 4: batches of 4 and 2. A compiled model compiles the 2 on first
    sight; that must happen in the warm-up, not in the timed loop."""
    model, tok = model_and_tokenizer
    # a new batch size: "compile" for 1000 s
    calls = slow_encoder(model, monkeypatch, 1000.0, key=lambda feats: feats.shape[0])
    rows, t = run(model, tok, *random_features, "cpu", {**DECODING, "batch_size": 4},
                  timing={"warmup_batches": 1}, progress=False)
    assert len(rows) == 6 and t["batches"] == 2 and set(calls) == {4, 2}
    assert t["compute_seconds"] < 1000
    # the protocol's count, not the extra shape: shards of one run must agree on it (gather)
    assert t["warmup_batches"] == 1


def test_parts_do_not_exceed_total_and_memory_is_filled(model_and_tokenizer, random_features):
    model, tok = model_and_tokenizer
    t0 = time.perf_counter()
    _, t = run(model, tok, *random_features, "cpu", DECODING, threads=1, progress=False)
    wall = time.perf_counter() - t0
    parts = t["encoder_seconds"] + t["decoder_seconds"] + t["longform_seconds"]
    assert 0 < t["encoder_seconds"] and 0 < t["decoder_seconds"]
    assert parts <= t["compute_seconds"] * (1 + 1e-9) <= wall
    assert t["rtf"] == pytest.approx(t["compute_seconds"] / 60.0)
    assert t["rtfx"] == pytest.approx(1 / t["rtf"])
    assert t["generated_tokens"] > 0 and t["tokens_per_second"] > 0
    assert t["peak_rss_mb"] > 100  # torch alone is larger than that
    assert 100 < t["timed_peak_rss_mb"] <= t["peak_rss_mb"]
    assert 100 < t["resident_rss_mb"] <= t["timed_peak_rss_mb"] + 1  # counters lag a little
    assert t["cuda_peak_allocated_mb"] is None and t["threads"] == 1
    json.dumps(t)  # serialisable as is


def test_latency_regime_uses_batch_one(model_and_tokenizer, random_features):
    model, tok = model_and_tokenizer
    rows, t = run(model, tok, *random_features, "cpu", DECODING, timing={"regime": "latency"},
                  progress=False)
    assert t["batch_size"] == 1 and t["batches"] == 6 and len(t["batch_seconds"]) == 6
    assert min(t["batch_seconds"]) <= t["latency_p50_s"] <= t["latency_p90_s"] <= max(t["batch_seconds"])
    with pytest.raises(Exception, match="unknown timing regime"):
        run(model, tok, *random_features, "cpu", DECODING, timing={"regime": "fastest"}, progress=False)


def test_encoder_then_generate_matches_plain_generate(model_and_tokenizer, random_features):
    """Splitting the timing into encoder and decoder parts does not change the output."""
    from whisper_ptq.features import FeatureCache
    from whisper_ptq.decode import Transcriber, generation_kwargs

    model, tok = model_and_tokenizer
    cache = FeatureCache(random_features[0])
    feats = torch.stack([cache.get(k) for k in sorted(cache.keys())[:2]])
    texts, _ = Transcriber(model, tok, "cpu", DECODING)(feats)
    with torch.no_grad():
        plain = model.generate(feats, **generation_kwargs(model, DECODING))
    assert texts == tok.batch_decode(plain, skip_special_tokens=True)


@pytest.mark.slow
def test_utterance_over_30_s_is_transcribed_whole(tiny_en_dir, clean_split_dir, tmp_path):
    """Real speech: five utterances joined into one > 30 s; words from the end must appear."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizer
    from safetensors.numpy import save_file

    from whisper_ptq.data import list_utterances
    from whisper_ptq.features import log_mel, read_flac
    from whisper_ptq.scoring import score_utterance

    utts = list_utterances(clean_split_dir)[:40]
    chosen, audio = [], []
    for u in utts:
        chosen.append(u)
        audio.append(read_flac(u.path))
        if sum(a.size for a in audio) > 16000 * 34:
            break
    joined = np.concatenate(audio)
    fe = WhisperFeatureExtractor.from_pretrained(tiny_en_dir)
    feats = log_mel(fe, joined)
    assert feats.shape[-1] > 3000
    save_file({"x-1-0000": feats}, tmp_path / "f.st")
    ref = " ".join(u.reference for u in chosen)
    write_jsonl(tmp_path / "m.jsonl", [{"id": "x-1-0000", "speaker": "x", "duration": joined.size / 16000,
                                        "reference": ref, "n_frames": feats.shape[-1]}])
    model = load_fp32(tiny_en_dir)
    rows, t = run(model, WhisperTokenizer.from_pretrained(tiny_en_dir), tmp_path / "f.st",
                  tmp_path / "m.jsonl", "cpu", {"batch_size": 4}, timing={"warmup_batches": 0},
                  progress=False)
    assert t["longform_seconds"] > 0 and t["encoder_seconds"] == 0
    s = score_utterance(ref, rows[0]["hypothesis"])
    last_words = score_utterance(chosen[-1].reference, rows[0]["hypothesis"])
    assert s["words"]["deletions"] < 0.2 * s["words"]["n"]  # not cut at 30 s
    assert last_words["words"]["hits"] >= 0.7 * last_words["words"]["n"]


def test_timed_peak_rss_leaves_out_what_was_freed_before_the_loop():
    """A load that briefly holds two copies of a model must not count as the loop's memory:
    memory_reset restarts the peak mark, and the job's own peak is kept beside it."""
    from whisper_ptq.decode import memory_reset, memory_stats, peak_rss_mb

    mib = 2**20
    loading = np.ones(600 * mib, dtype=np.uint8)  # touched pages: resident
    with_loading = peak_rss_mb()
    del loading  # a large array is unmapped when freed
    before = memory_reset("cpu")
    assert before["timed"], "this Linux refused clear_refs; the timed peak would be None"
    loop = np.ones(100 * mib, dtype=np.uint8)
    mem = memory_stats("cpu", before)
    assert mem["peak_rss_mb"] >= with_loading - 1  # the kernel's RSS counters lag a little
    assert mem["timed_peak_rss_mb"] <= with_loading - 400
    assert mem["timed_peak_rss_mb"] >= peak_rss_mb() - 1 and loop.sum() == 100 * mib
    assert mem["timed_peak_rss_mb"] + 1 >= mem["resident_rss_mb"] > 100  # the loop's array


def test_memory_the_allocator_kept_free_is_given_back():
    """Small blocks come from glibc's heap, and freeing them (the last one still held) leaves
    their pages resident: the batches' working set would count in the resident set after the
    loop. release_free_memory hands them back."""
    import ctypes
    import ctypes.util

    from whisper_ptq.decode import release_free_memory, rss_mb

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, n = 64 * 1024, 4000  # 250 MiB in blocks under glibc's mmap threshold
    start = rss_mb()
    blocks = [libc.malloc(size) for _ in range(n)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in blocks[:-1]:
        libc.free(b)
    kept = rss_mb()
    try:
        assert kept > start + 200, "freed heap blocks were not kept resident; nothing to test"
        assert release_free_memory()
        assert rss_mb() < kept - 200
    finally:
        libc.free(blocks[-1])
