"""The step outputs' records (whisper_ptq.records): what is written reads back as the same
record, the files keep their keys, and a file with a missing or unknown key is one clear
error naming the file and the key, in every step that reads it."""

from __future__ import annotations

import re

import pytest
from test_report import make_score, outputs, write_scores
from test_shards import hyp, shard_timing

from whisper_ptq import PipelineError, report
from whisper_ptq.io import read_json, write_json, write_jsonl
from whisper_ptq.records import QuantMeta, Score, ShardTiming, Timing
from whisper_ptq.report import row_from_score
from whisper_ptq.scoring import build_score, gather_shards, score_run


def quant_meta(entry="int8", bytes_on_disk=400, linear_bytes=200, fp32_linear_bytes=800,
               notes=()):
    return QuantMeta(entry=entry, config={"library": "torch", "scheme": "int8-dynamic"},
                     facts={"library": "torch", "weights": "int8"}, quantize_seconds=1.5,
                     provenance={"hostname": "n1", "loadavg": [0.5, 0.4, 0.3]},
                     linear_bytes=linear_bytes, fp32_linear_bytes=fp32_linear_bytes,
                     calibration_batches=0, calibration=None, notes=list(notes),
                     bytes_on_disk=bytes_on_disk)


# The keys of each step output as the pipeline wrote them before the records (issue 13):
# existing results must keep reading, and re-runs must find the same content.
SHARD_KEYS = {"device", "regime", "utterances", "audio_seconds", "compute_seconds",
              "encoder_seconds", "decoder_seconds", "longform_seconds", "generated_tokens",
              "tokens_per_second", "rtf", "rtfx", "batches", "batch_size", "batch_seconds",
              "warmup_batches", "threads", "peak_rss_mb", "cuda_peak_allocated_mb",
              "cuda_peak_reserved_mb", "shard", "sorted_by_length", "order", "entry", "split",
              "facts", "decoding", "provenance", "runtime"}
GATHERED_KEYS = (SHARD_KEYS - {"shard", "runtime"}) | {"shards", "mixed_hardware", "shard_runs"}
SCORE_KEYS = {"wer", "cer", "words", "chars", "utterances", "entry", "split", "device", "facts",
              "audio_seconds", "compute_seconds", "rtf", "rtfx", "threads", "batch_size",
              "shards", "mixed_hardware", "n_utterances", "model", "config", "decoding",
              "provenance", "bytes_on_disk", "fp32_bytes_on_disk", "size_reduction",
              "linear_size_reduction"}
QUANT_KEYS = {"entry", "config", "facts", "quantize_seconds", "provenance", "linear_bytes",
              "fp32_linear_bytes", "calibration_batches", "calibration", "notes", "bytes_on_disk"}
LATENCY_KEYS = {"latency_p50_s", "latency_p90_s"}


@pytest.fixture
def score_step(tmp_path):
    """The score step on two fabricated shards and checkpoint metadata files."""
    t0, t1 = shard_timing(0, 2, ["b", "d"], 2.0, 10.0), shard_timing(1, 2, ["a", "c"], 1.0, 30.0)
    for i, (t, ids) in enumerate(((t0, ["b", "d"]), (t1, ["a", "c"]))):
        t.write(tmp_path / f"shard{i}.timing.json")
        write_jsonl(tmp_path / f"shard{i}.hyp.jsonl", hyp(ids))
    quant_meta().write(tmp_path / "int8.json")
    quant_meta("fp32", 1000, 800, 800).write(tmp_path / "fp32.json")
    return dict(hyp_paths=[tmp_path / f"shard{i}.hyp.jsonl" for i in range(2)],
                 timing_paths=[tmp_path / f"shard{i}.timing.json" for i in range(2)],
                 meta_path=tmp_path / "int8.json", fp32_meta_path=tmp_path / "fp32.json",
                 model="tiny.en", out=tmp_path / "x.score.json",
                 out_hyp=tmp_path / "x.hyp.jsonl", out_timing=tmp_path / "x.timing.json")


def test_each_record_reads_back_what_it_wrote(tmp_path):
    shard = shard_timing(0, 1, ["a", "b"], 2.0, 10.0)
    _, gathered = gather_shards([hyp(["a", "b"])], [shard])
    records = [quant_meta(notes=["proj_out: quantized with axis=0"]), shard, gathered,
               make_score("base", "cpu", "int8", "test-clean", [1, 0, 2, 0])]
    for i, record in enumerate(records):
        record.write(tmp_path / f"{i}.json")
        again = type(record).read(tmp_path / f"{i}.json")
        assert again == record and again is not record
    assert set(read_json(tmp_path / "0.json")) == QUANT_KEYS
    assert set(read_json(tmp_path / "1.json")) == SHARD_KEYS
    assert set(read_json(tmp_path / "2.json")) == GATHERED_KEYS
    assert set(read_json(tmp_path / "3.json")) == SCORE_KEYS


def test_latency_percentiles_are_written_only_in_the_latency_regime():
    shards = [shard_timing(i, 2, [f"u{i}"], 1.0 + i, 10.0) for i in range(2)]
    _, gathered = gather_shards([hyp(["u0"]), hyp(["u1"])], shards)
    assert not LATENCY_KEYS & set(gathered.to_json())
    for t in shards:
        t.regime, t.latency_p50_s, t.latency_p90_s = "latency", 1.0, 1.0
    _, gathered = gather_shards([hyp(["u0"]), hyp(["u1"])], shards)
    assert set(gathered.to_json()) == GATHERED_KEYS | LATENCY_KEYS
    assert (gathered.latency_p50_s, gathered.latency_p90_s) == (1.5, 2.0)
    assert Timing.from_json(gathered.to_json()) == gathered
    score = build_score(hyp(["u0", "u1"]), gathered, quant_meta(),
                        quant_meta("fp32", 1000, 800, 800), "base")
    assert (score.latency_p50_s, score.latency_p90_s) == (1.5, 2.0)
    assert row_from_score(score)["latency_p90_s"] == 2.0  # a runs.csv column


def test_score_step_writes_its_records(score_step):
    score = score_run(**score_step)
    on_disk = read_json(score_step["out"])
    # the gathered timing's split and peak memory come along (no CUDA peak, no latency: unset)
    carried = {"encoder_seconds", "decoder_seconds", "peak_rss_mb"}
    assert set(on_disk) == SCORE_KEYS | carried and Score.read(score_step["out"]) == score
    gathered = Timing.read(score_step["out_timing"])
    assert {k: on_disk[k] for k in carried} == {k: getattr(gathered, k) for k in carried}
    assert (score.size_reduction, score.linear_size_reduction) == (60.0, 75.0)
    assert score.n_utterances == 4 and score.shards == 2 and score.wer == 0.0
    assert score.rtf == pytest.approx(3.0 / 40.0)
    assert score.provenance["quantize"] == quant_meta().provenance
    assert score.provenance["transcribe"]["hostname"] == "n1"
    assert set(read_json(score_step["out_timing"])) == GATHERED_KEYS


@pytest.mark.parametrize("record, keys", [(QuantMeta, QUANT_KEYS), (ShardTiming, SHARD_KEYS),
                                          (Score, SCORE_KEYS)])
def test_a_missing_or_unknown_key_names_the_file_and_the_key(tmp_path, record, keys):
    sample = {QuantMeta: quant_meta, ShardTiming: lambda: shard_timing(0, 1, ["a"], 1.0, 5.0),
              Score: lambda: make_score("base", "cpu", "fp32", "test-clean", [0])}[record]()
    data = sample.to_json()
    assert set(data) == keys
    path = tmp_path / "old.json"
    named = re.escape(f"{path} ({record.__name__}): ")
    write_json(path, {k: v for k, v in data.items() if k != "facts"})
    with pytest.raises(PipelineError, match=named + "key 'facts' is missing"):
        record.read(path)
    write_json(path, {**data, "wer_x": 1.0})
    with pytest.raises(PipelineError, match=named + "unknown key 'wer_x'"):
        record.read(path)
    write_json(path, [data])
    with pytest.raises(PipelineError, match=named + "expected a JSON object"):
        record.read(path)


def test_the_steps_that_read_a_bad_file_name_it(tmp_path, score_step):
    # score: a shard's timing lacking a key
    bad = score_step["timing_paths"][1]
    write_json(bad, {k: v for k, v in read_json(bad).items() if k != "order"})
    msg = re.escape(f"{bad} (ShardTiming): key 'order' is missing")
    with pytest.raises(PipelineError, match=msg):
        score_run(**score_step)
    assert not score_step["out"].exists() and not score_step["out_hyp"].exists()
    # report: a score file with a key this version does not know
    paths = write_scores(tmp_path, [make_score("base", "cpu", "fp32", "test-clean", [0, 1])])
    write_json(paths[0], {**read_json(paths[0]), "new_metric": 1})
    msg = re.escape(f"{paths[0]} (Score): unknown key 'new_metric'")
    with pytest.raises(PipelineError, match=msg):
        report.build(paths, [], **outputs(tmp_path), n_resamples=10)
    # transcribe: a checkpoint whose quant.json lacks the entry's config
    ckpt = tmp_path / "ckpt"
    quant_meta().write(ckpt / "quant.json")
    write_json(ckpt / "quant.json", {k: v for k, v in read_json(ckpt / "quant.json").items()
                                     if k != "config"})
    from whisper_ptq.checkpoint import load_checkpoint

    msg = re.escape(f"{ckpt / 'quant.json'} (QuantMeta): key 'config' is missing")
    with pytest.raises(PipelineError, match=msg):
        load_checkpoint(ckpt, tmp_path, "cpu")



def test_fallback_counts_are_summed_over_shards_and_reach_runs_csv():
    shards = [shard_timing(i, 2, [f"u{i}"], 1.0 + i, 10.0) for i in range(2)]
    _, gathered = gather_shards([hyp(["u0"]), hyp(["u1"])], shards)
    assert gathered.fallback_utterances is None and "fallback_utterances" not in gathered.to_json()
    shards[0].fallback_utterances, shards[1].fallback_utterances = 1, 0
    rows = [{**r, "temperature": t} for r, t in zip(hyp(["u0", "u1"]), (0.4, 0.0))]
    _, gathered = gather_shards([rows[:1], rows[1:]], shards)
    assert Timing.from_json(gathered.to_json()).fallback_utterances == 1
    score = build_score(rows, gathered, quant_meta(), quant_meta("fp32", 1000, 800, 800), "base")
    assert [u["temperature"] for u in score.utterances] == [0.4, 0.0]
    assert row_from_score(score)["fallback_utterances"] == 1
