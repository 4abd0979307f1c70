"""Devices that fit the machine, length-sorted order, shards (scatter–gather).

* `devices: auto` is cpu (+ cuda where jobs can use CUDA); an explicit cuda without CUDA
  stops validation with one line.
* A split's utterances form one ordered list (longest first, > 30 s last) that shards cut;
  scoring gathers the shards (RTF pooled, hardware of every shard kept, mixed flagged).
* Real runs (slow): the README's mini command with default devices on this GPU-less
  machine exits 0 and plans no cuda job, `--profile slurm -n` then plans the cuda half; a
  sharded run equals an unsharded one, and a shard killed mid-run is the only one redone.
"""

from __future__ import annotations

import math

import pytest

from whisper_ptq import PipelineError
from whisper_ptq.config import cuda_visible, resolve_devices
from whisper_ptq.decode import NB_MAX_FRAMES, make_batches, ordered_rows, shard_bounds
from whisper_ptq.records import ShardTiming
from whisper_ptq.scoring import gather_shards



def rows(durations):
    return [{"id": f"s{i % 3}-{i:03d}", "speaker": f"s{i % 3}", "duration": d, "reference": "x",
             "n_frames": min(int(d * 100), NB_MAX_FRAMES) if d <= 30 else int(d * 100)}
            for i, d in enumerate(durations)]


# --- devices ---------------------------------------------------------------------------------

def test_devices_auto_and_explicit_cuda():
    assert resolve_devices("auto", cuda=False) == ["cpu"]
    assert resolve_devices("auto", cuda=True) == ["cpu", "cuda"]
    assert resolve_devices("cpu,cuda", cuda=True) == ["cpu", "cuda"]
    assert resolve_devices(["cpu"], cuda=False) == ["cpu"]
    with pytest.raises(PipelineError, match="asks for cuda, but this machine has no CUDA"):
        resolve_devices(["cpu", "cuda"], cuda=False)


def test_cuda_visible_respects_an_empty_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cuda_visible() is False


# --- order and shards --------------------------------------------------------------------------

def test_order_is_longest_first_with_long_form_last():
    r = rows([3.0, 12.5, 7.0, 35.0, 12.5, 1.0, 31.0])
    order = ordered_rows(r, split="x")
    durations = [u["duration"] for u in order]
    assert durations == [12.5, 12.5, 7.0, 3.0, 1.0, 35.0, 31.0]
    ties = [u["id"] for u in order if u["duration"] == 12.5]
    assert ties == sorted(ties)  # equal durations in id order: one order on every machine
    # limit and exclusion choose the utterances first (speakers round-robin), then the sort
    chosen = ordered_rows(r, limit=4, exclude=[r[1]["id"]], split="x")
    assert {u["id"] for u in chosen} == {u["id"] for u in ordered_rows(r, 4, [r[1]["id"]], "x",
                                                                       sort=False)}
    assert r[1]["id"] not in {u["id"] for u in chosen} and len(chosen) == 4
    assert [u["id"] for u in ordered_rows(r, sort=False)] == [u["id"] for u in r]  # manifest order


def test_shard_bounds_cut_the_list():
    assert shard_bounds(10, None) == shard_bounds(10, 0) == shard_bounds(10, 10) == [(0, 10)]
    assert shard_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert len(shard_bounds(2620, 512)) == math.ceil(2620 / 512)


def test_shards_a_multiple_of_the_batch_size_keep_every_batch():
    order = ordered_rows(rows([float(d % 29 + 1) for d in range(37)] + [40.0, 33.0]), split="x")
    whole = make_batches(order, 4)
    sharded = [b for lo, hi in shard_bounds(len(order), 8) for b in make_batches(order[lo:hi], 4)]
    key = lambda bs: sorted(tuple(u["id"] for u in b) for b in bs)  # noqa: E731
    assert key(sharded) == key(whole)
    # not a multiple: the batches differ (the README says so)
    sharded6 = [b for lo, hi in shard_bounds(len(order), 6) for b in make_batches(order[lo:hi], 4)]
    assert key(sharded6) != key(whole)


def shard_timing(index, count, ids, seconds, audio, cpu="EPYC 9654", gpu=None, host="n1"):
    return ShardTiming(
        entry="fp32", split="test-clean", device="cpu", regime="throughput", batch_size=2,
        threads=1, warmup_batches=1, sorted_by_length=True, facts={},
        decoding={"batch_size": 2}, utterances=len(ids), audio_seconds=audio,
        compute_seconds=seconds, encoder_seconds=seconds / 2, decoder_seconds=seconds / 2,
        longform_seconds=0.0, generated_tokens=10, tokens_per_second=20 / seconds, batches=1,
        batch_seconds=[seconds], peak_rss_mb=100.0 + index, cuda_peak_allocated_mb=None,
        cuda_peak_reserved_mb=None, rtf=seconds / audio, rtfx=audio / seconds,
        shard={"index": index, "count": count, "start": 0, "stop": len(ids), "size": 2},
        order=ids, provenance={"hostname": host, "cpu": {"model": cpu}, "gpu": gpu},
        runtime=None)


def hyp(ids):
    return [{"id": i, "speaker": "s", "duration": 1.0, "reference": "a", "hypothesis": "a"}
            for i in ids]


def test_gather_pools_rtf_and_flags_mixed_hardware():
    t0 = shard_timing(0, 2, ["b", "d"], 2.0, 10.0)
    t1 = shard_timing(1, 2, ["a", "c"], 1.0, 30.0, host="n2")
    got, timing = gather_shards([hyp(["a", "c"]), hyp(["b", "d"])], [t1, t0])
    assert [r["id"] for r in got] == ["a", "b", "c", "d"]
    assert timing.rtf == pytest.approx(3.0 / 40.0)  # Σ timed / Σ audio, not a mean of RTFs
    assert timing.order == ["b", "d", "a", "c"] and timing.shards == 2
    assert timing.peak_rss_mb == 101.0
    assert [s["provenance"]["hostname"] for s in timing.shard_runs] == ["n1", "n2"]
    assert timing.mixed_hardware is None  # two hosts, one kind of machine
    t1 = shard_timing(1, 2, ["a", "c"], 1.0, 30.0, cpu="Xeon 8480")
    _, timing = gather_shards([hyp(["b", "d"]), hyp(["a", "c"])], [t0, t1])
    assert "EPYC 9654" in timing.mixed_hardware and "Xeon 8480" in timing.mixed_hardware


def test_gather_refuses_missing_or_inconsistent_shards():
    t0 = shard_timing(0, 2, ["a"], 1.0, 5.0)
    with pytest.raises(PipelineError, match="expected 0..1 of 2"):
        gather_shards([hyp(["a"])], [t0])
    t1 = shard_timing(1, 2, ["b"], 1.0, 5.0)
    t1.batch_size = 4
    with pytest.raises(PipelineError, match="differ in 'batch_size'"):
        gather_shards([hyp(["a"]), hyp(["b"])], [t0, t1])
    t1 = shard_timing(1, 2, ["a"], 1.0, 5.0)
    with pytest.raises(PipelineError, match="duplicate or missing"):
        gather_shards([hyp(["a"]), hyp(["a"])], [t0, t1])


# --- real runs ---------------------------------------------------------------------------------
