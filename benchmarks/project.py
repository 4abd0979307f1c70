"""Project the real study (whisper-small, full test-clean + test-other, every default entry of
config.yaml) from the full-size synthetic run through Snakemake (fullsize_run.py), on an
8-core workstation and on a SLURM cluster of N EPYC nodes (benchmarks/README.md, "Full-size
run through Snakemake (shards)"). Every assumption is a named constant or option here, so the
table is recomputed, not hand-written:

    python benchmarks/project.py --measured benchmarks/fullsize-snakemake.json > table.md

Cost model of one (entry, split) on CPU, in core-seconds (1 thread, as measured):

    fp32 = n_utts * enc_s_per_utt * R_enc + audio_s * dec_s_per_audio_s * R_dec
    entry = fp32 * (entry time / fp32 time)

* ``enc_s_per_utt``, ``dec_s_per_audio_s``: tiny.en's encoder seconds per utterance (the
  encoder always sees a 30 s window) and decoder seconds per second of speech (tokens follow
  the words), pooled over the measured shards.
* ``R_enc``: whisper-small / tiny.en multiply-accumulates of the encoder (per utterance; a
  1500-frame GEMM workload, compute-bound). ``R_dec``: whisper-small / tiny.en weights read per
  decoder step (``DECODER_SCALING``: batch-16 decoding on CPU is bound by reading weights, not
  by arithmetic), bracketed by the layer-count ratio (per-layer overhead) and the
  multiply-accumulate ratio; the totals are given for all three. Architectures: ``DIMS``.
* entry / fp32 time: this pipeline's CPU RTFs of Whisper base on the mini sets
  (docs/results/base-mini/matrix/runs.csv, per split; entries it lacks from MORE_RUNS_CSVS,
  against that run's own fp32); for ct2 and torchao entries the paired
  medians of benchmarks/results_runtimes*.json (base; a later run's entry replaces an
  earlier one's: RUNTIMES_JSONS); entries measured nowhere are listed and
  left out of the totals.
* each shard job's wall = its compute × (measured job wall / measured compute), which carries
  start-up, model load and the untimed warm-up batch.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

from whisper_ptq.config import load_study  # noqa: E402
from whisper_ptq.decode import shard_bounds  # noqa: E402

# public architectures (config.json of openai/whisper-{tiny.en,base,small})
DIMS = {
    "tiny.en": {"d": 384, "enc": 4, "dec": 4, "ffn": 1536, "mels": 80, "vocab": 51864},
    "base": {"d": 512, "enc": 6, "dec": 6, "ffn": 2048, "mels": 80, "vocab": 51865},
    "small": {"d": 768, "enc": 12, "dec": 12, "ffn": 3072, "mels": 80, "vocab": 51865},
}
FRAMES = 1500  # encoder positions of a 30 s window

# the real splits (openslr: utterances, hours)
SPLITS = {"test-clean": (2620, 5.4 * 3600), "test-other": (2939, 5.3 * 3600)}
QUANTIZE_CORE_S = 120  # per entry, small (notes: HQQ quantizes small in 70 s); upper-ish guess
RUNS_CSV = REPO / "docs/results/base-mini/matrix/runs.csv"
# later base runs of entries the matrix lacks (its own fp32 row is their reference)
MORE_RUNS_CSVS = {f"base {name}/": REPO / f"docs/results/base-mini/{name}/runs.csv"
                  for name in ("whispercpp", "ort", "openvino")}
# a later file's entry replaces an earlier one's: the 4-utterance run, then the 8-utterance
# runs (benchmarks/README.md, "Runtimes"); results_runtimes_slow.json (1 utterance, batch 1,
# under heavy load) is left out: its ratios are far from the study's batch 16
RUNTIMES_JSONS = [REPO / "benchmarks" / f for f in (
    "results_runtimes.json", "results_runtimes_compile.json", "results_runtimes_int8dyn8.json")]
# shared/notes/quantization-libraries.md, "Speed on this CPU" (random weights, 30 s input,
# 50 forced tokens, 2 threads), small column: time / fp32 time. Shown beside the pipeline's
# base ratios as the other available estimate, not used for the totals.
NOTES_SMALL = {"torch-int8-dyn": 0.38, "bnb-nf4": 0.54, "bnb-fp4": 0.54, "bnb-int8": 0.67,
               "quanto-int8": 2.19, "quanto-int4": 2.59, "hqq-int4-g64": 1.64,
               "hqq-int4-g128": 1.64}


def encoder_macs(m: dict) -> float:
    d, t = m["d"], FRAMES
    conv = 2 * t * 3 * m["mels"] * d + t * 3 * d * d
    layer = t * (4 * d * d + 2 * d * m["ffn"]) + 2 * t * t * d
    return conv + m["enc"] * layer


def decoder_macs(m: dict, tokens: float) -> float:
    """Per utterance: cross-attention K/V of the encoder output once, then ``tokens`` steps."""
    d, t = m["d"], FRAMES
    cross_kv = m["dec"] * 2 * d * d * t
    per_token = m["dec"] * (6 * d * d + 2 * d * m["ffn"] + 2 * t * d) + d * m["vocab"]
    return cross_kv + tokens * per_token


def decoder_weights(m: dict, tokens: float = 0) -> float:
    """Weights one decoder step reads (layers + the tied output head over the vocabulary)."""
    d = m["d"]
    return m["dec"] * (8 * d * d + 2 * d * m["ffn"]) + d * m["vocab"]


def decoder_layers(m: dict, tokens: float = 0) -> float:
    return m["dec"]


# how decoder time grows with the model, bracketed: a CPU decoder step at batch 16 is small
# matrix-vector work, bound by reading the weights (central), between per-layer overhead
# (low) and arithmetic (high)
DECODER_SCALING = {"weights": decoder_weights, "layers": decoder_layers, "macs": decoder_macs}


def base_ratios(path=RUNS_CSV) -> dict:
    """entry -> {split: entry RTF / fp32 RTF} from a committed base run (CPU)."""
    rows = [r for r in csv.DictReader(Path(path).open())
            if r["device"] == "cpu" and r["status"] == "ok"]
    fp32 = {r["split"]: float(r["rtf"]) for r in rows if r["entry"] == "fp32"}
    out: dict[str, dict] = {}
    for r in rows:
        out.setdefault(r["entry"], {})[r["split"]] = float(r["rtf"]) / fp32[r["split"]]
    return out


def runtime_ratios() -> dict:
    out = {}
    for path in RUNTIMES_JSONS:
        summary = json.loads(path.read_text())["summary"]
        out.update({e: s["time_ratio_vs_fp32"]["median"] for e, s in summary.items()})
    return out


def base_check() -> dict:
    """Measured base / tiny.en fp32 CPU time, from the committed results (2 threads)."""
    tiny = float(json.loads((REPO / "benchmarks/results.json").read_text())["rtf_fp32"])
    rows = [r for r in csv.DictReader(RUNS_CSV.open())
            if r["entry"] == "fp32" and r["device"] == "cpu" and r["split"] == "test-clean"]
    base = float(rows[0]["rtf"])
    return {"ratio": base / tiny, "how": f"RTF {base:.4f} base (runs.csv, 24 test-clean utts, "
            f"batch 16) / {tiny:.4f} tiny.en (results.json, 24 utts, batch 8), both 2 threads, "
            "not paired"}


def lpt(durations: list[float], slots: int) -> float:
    """Makespan of longest-first list scheduling on ``slots`` identical slots."""
    heap = [0.0] * max(1, slots)
    for d in sorted(durations, reverse=True):
        heapq.heappush(heap, heapq.heappop(heap) + d)
    return max(heap)


def measured_costs(m: dict) -> dict:
    """Pooled per-utterance / per-audio-second costs of the measured shards, in CPU seconds:
    a shard's timed (wall-clock) seconds × its CPU share (CPU seconds / job wall), because on
    this shared 2-core machine a 1-thread job got only part of a core."""
    shards = [s for s in m["shards"] if s.get("utterances")]

    def share(s):
        return s["cpu_s"] / s["job_wall_s"] if s.get("cpu_s") and s.get("job_wall_s") else 1.0

    n = sum(s["utterances"] for s in shards)
    audio = sum(s["audio_seconds"] for s in shards)
    enc = sum(s["encoder_seconds"] * share(s) for s in shards)
    dec = sum((s["decoder_seconds"] + (s.get("longform_seconds") or 0)) * share(s) for s in shards)
    walled = [s for s in shards if s.get("job_wall_s")]
    overhead = (sum(s["job_wall_s"] for s in walled) / sum(s["compute_seconds"] for s in walled)
                if walled else 1.0)
    f = m["features"]
    audio_all = audio / n * f["utterances"] if n else None  # features ran on every utterance
    return {"shards": len(shards), "utterances": n, "audio_s": audio,
            "cpu_share": [round(share(s), 3) for s in shards],
            "wall_rtf": sum(s["compute_seconds"] for s in shards) / audio,
            "cpu_rtf": (enc + dec) / audio,
            "enc_s_per_utt": enc / n, "dec_s_per_audio_s": dec / audio,
            "tokens_per_utt": sum(s["generated_tokens"] for s in shards) / n,
            "wall_over_compute": overhead,
            "features_s_per_audio_s": f["job_wall_s"] / audio_all if audio_all else None}


def scale(model: str, c: dict) -> dict:
    """tiny.en -> model factors: encoder, and decoder under each DECODER_SCALING."""
    tok = c["tokens_per_utt"]
    out = {"enc": encoder_macs(DIMS[model]) / encoder_macs(DIMS["tiny.en"])}
    for k, f in DECODER_SCALING.items():
        out[k] = f(DIMS[model], tok) / f(DIMS["tiny.en"], tok)
    return out


def project(m: dict, *, shard_size: int, threads: int, eff: float, nodes: list[int],
            node_cores: int, max_jobs: int, runtime_min: int, base_check: dict) -> str:
    c = measured_costs(m)
    r = scale("small", c)
    study = load_study(REPO / "config.yaml", {"devices": ["cpu", "cuda"]})
    cpu_entries = [e for e in study.selected if "cpu" in study.devices_of(e)
                   and not study.unsupported_reason(e, "cpu")]
    cuda_entries = [e for e in study.selected if "cuda" in study.devices_of(e)
                    and not study.unsupported_reason(e, "cuda")]
    base, rt = base_ratios(), runtime_ratios()
    more = {label: base_ratios(path) for label, path in MORE_RUNS_CSVS.items()}
    ratios, unprojected = {}, []
    for e in cpu_entries:
        later = [label for label, run in more.items() if e in run]
        if e in base:
            ratios[e] = ({s: base[e][s] for s in SPLITS}, "base matrix")
        elif later:
            ratios[e] = ({s: more[later[0]][e][s] for s in SPLITS}, later[0])
        elif e in rt:
            ratios[e] = ({s: rt[e] for s in SPLITS}, "runtimes (base)")
        else:
            unprojected.append(e)
    n_shards = {s: len(shard_bounds(n, shard_size)) for s, (n, _) in SPLITS.items()}

    def plan(r_dec: float):
        """fp32 core-s per split, and per entry: (core-s, [shard job wall at 1 thread])."""
        def fp32(split, k):  # k utterances of the split; audio pro rata
            n_utts, audio = SPLITS[split]
            return k * c["enc_s_per_utt"] * r["enc"] + audio * k / n_utts * c["dec_s_per_audio_s"] * r_dec
        per_entry = {}
        for e, (ratio, _) in ratios.items():
            jobs = [fp32(s, hi - lo) * ratio[s] * c["wall_over_compute"]
                    for s, (n, _) in SPLITS.items() for lo, hi in shard_bounds(n, shard_size)]
            per_entry[e] = (sum(fp32(s, n) * ratio[s] for s, (n, _) in SPLITS.items()), jobs)
        return {s: fp32(s, n) for s, (n, _) in SPLITS.items()}, per_entry

    plans = {k: plan(r[k]) for k in DECODER_SCALING}
    fp32_split, per_entry = plans["weights"]
    features_s = {s: a * c["features_s_per_audio_s"] for s, (_, a) in SPLITS.items()}
    pre = max(features_s.values())  # the two splits' features run side by side, before shards
    quant = QUANTIZE_CORE_S * len(cpu_entries)
    out = []
    w = out.append
    pred_base = ((c["enc_s_per_utt"] * c["utterances"] * scale("base", c)["enc"]
                  + c["dec_s_per_audio_s"] * c["audio_s"] * scale("base", c)["weights"])
                 / (c["enc_s_per_utt"] * c["utterances"] + c["dec_s_per_audio_s"] * c["audio_s"]))
    w(f"- Measured, tiny.en fp32, 1 thread: {c['shards']} shards, {c['utterances']} utterances, "
      f"{c['audio_s'] / 3600:.2f} h of audio; RTF {c['wall_rtf']:.4f} timed (wall-clock), "
      f"{c['cpu_rtf']:.4f} in CPU seconds (CPU share per shard {', '.join(map(str, c['cpu_share']))}): encoder {c['enc_s_per_utt']:.3f} s per utterance, "
      f"decoder {c['dec_s_per_audio_s']:.4f} s per second of audio ({c['tokens_per_utt']:.1f} "
      f"generated tokens per utterance), job wall / compute {c['wall_over_compute']:.3f}, "
      f"features {c['features_s_per_audio_s'] * 1000:.2f} ms per second of audio.")
    w(f"- tiny.en → small: encoder ×{r['enc']:.2f} (multiply-accumulates); decoder ×{r['weights']:.2f}"
      f" (weights read per step), bracketed by ×{r['layers']:.2f} (layers) and ×{r['macs']:.2f} "
      f"(multiply-accumulates). Check on base: this model predicts base / tiny.en = "
      f"{pred_base:.2f}; measured {base_check['ratio']:.2f} ({base_check['how']}).")
    w(f"- whisper-small fp32 on CPU, 1 core: test-clean {fp32_split['test-clean'] / 3600:.1f} h "
      f"(RTF {fp32_split['test-clean'] / SPLITS['test-clean'][1]:.2f}), test-other "
      f"{fp32_split['test-other'] / 3600:.1f} h (RTF {fp32_split['test-other'] / SPLITS['test-other'][1]:.2f}); "
      f"shards per split at shard_size {shard_size}: {n_shards['test-clean']} / {n_shards['test-other']}; "
      f"features per split {max(features_s.values()) / 60:.0f} min (80 mels, as tiny.en).")
    w("")
    w("| CPU entry | time / fp32 (test-clean / test-other) | source | notes' small column | "
      f"core-hours, both splits | longest shard, {threads} threads (min) |")
    w("|---|---|---|---|---|---|")
    total = 0.0
    for e, (ratio, src) in ratios.items():
        core_s, jobs = per_entry[e]
        total += sum(jobs)
        longest = max(jobs) / (threads * eff) / 60
        note = NOTES_SMALL.get(e)
        w(f"| {e} | {ratio['test-clean']:.2f} / {ratio['test-other']:.2f} | {src} | "
          f"{'' if note is None else f'{note:.2f}'} | {sum(jobs) / 3600:.1f} | "
          f"{longest:.0f}{' (> runtime ' + str(runtime_min) + ')' if longest > runtime_min else ''} |")
    w(f"| **{len(ratios)} entries** | | | | **{total / 3600:.0f}** | |")
    w("")
    if unprojected:
        w(f"Not projected (no usable time on this CPU at the study's batch size): "
          f"{', '.join(unprojected)}.")
        w("")
    n_cpu_jobs = len(cpu_entries) * sum(n_shards.values())
    n_cuda_jobs = len(cuda_entries) * sum(n_shards.values())
    w(f"Jobs of the study: {n_cpu_jobs} CPU transcribe shards ({len(cpu_entries)} entries × "
      f"{sum(n_shards.values())} shards), {n_cuda_jobs} CUDA shards ({len(cuda_entries)} entries), "
      f"{(len(cpu_entries) + len(cuda_entries)) * len(SPLITS)} score (local rule), "
      f"{len(set(cpu_entries) | set(cuda_entries))} quantize, {len(SPLITS)} features (+ dev-clean's "
      "download and features for the static-activation entries' calibration), report.")
    w("")
    w("| where | how | wall-clock, projected CPU entries: central [decoder low – high] |")
    w("|---|---|---|")

    def hours(s: float) -> str:
        return f"{s / 3600:.1f} h" if s < 72 * 3600 else f"{s / 86400:.1f} d"

    def span(f) -> str:
        v = {k: f([j for _, jobs in plans[k][1].values() for j in jobs]) for k in DECODER_SCALING}
        return f"{hours(v['weights'])} [{hours(v['layers'])} – {hours(v['macs'])}]"

    w(f"| workstation, 8 cores | `snakemake --cores 8`: 8 jobs × 1 thread (`threads=1`), or "
      f"one 8-thread job at a time at ideal scaling | "
      f"{span(lambda jobs: pre + quant / 8 + lpt(jobs, 8))} |")
    for n in nodes:
        w(f"| {n} EPYC nodes | `--profile slurm`: {threads} threads per job, `--exclusive` "
          f"(one job per node) | {span(lambda jobs: pre + lpt([j / (threads * eff) for j in jobs], min(n, max_jobs)))} |")
        k = min(n * (node_cores // threads), max_jobs)
        w(f"| {n} EPYC nodes | the same without `--exclusive`: {node_cores // threads} jobs per "
          f"{node_cores}-core node, {k} at once (profile `jobs: {max_jobs}`) | "
          f"{span(lambda jobs: pre + lpt([j / (threads * eff) for j in jobs], k))} |")
    w(f"| H100 nodes | {n_cuda_jobs} CUDA shard jobs ({len(cuda_entries)} entries) | to be "
      "measured by scripts/gpu_kit (docs/gpu.md) |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measured", type=Path, default=REPO / "benchmarks/fullsize-snakemake.json")
    ap.add_argument("--shard-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=8, help="threads per cluster / workstation job")
    ap.add_argument("--efficiency", type=float, default=1.0,
                    help="speed-up of one job on T threads / T (1 = ideal; unmeasured here)")
    ap.add_argument("--nodes", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--node-cores", type=int, default=64)
    ap.add_argument("--max-jobs", type=int, default=50, help="profiles/slurm `jobs`")
    ap.add_argument("--runtime-min", type=int, default=240, help="transcribe's first-attempt runtime")
    a = ap.parse_args(argv)
    print(project(json.loads(a.measured.read_text()), shard_size=a.shard_size, threads=a.threads,
                  eff=a.efficiency, nodes=a.nodes, node_cores=a.node_cores, max_jobs=a.max_jobs,
                  runtime_min=a.runtime_min, base_check=base_check()))


if __name__ == "__main__":
    main()
