"""Runtimes beside the PyTorch-side quantizers (issue 14): CTranslate2 and torchao entries
against fp32 and torch-int8-dyn, through the pipeline's own checkpoint and transcription code.

Every entry is quantized and loaded once (``save_checkpoint`` / ``load_checkpoint``) and
transcribes the whole utterance set once untimed (the warm-up pass: torch.compile compiles
there, for every batch shape and decode length the repeats will meet, so nothing recompiles
while timed; its wall time is reported, and for compiled entries minus the median timed
pass as the compile time). Then each repeat transcribes the same utterances with every entry
in a rotated order (so load changes hit all entries alike). Reported per entry: WER, RTF,
encoder / decoder seconds, the paired ratio entry time / fp32 time of the same repeat
(median, min, max), and how many hypotheses equal fp32's; /proc/loadavg before and after
each repeat. ``NAME+compile`` runs config entry NAME with ``compile: true`` (e.g. int8
weight-only compiled, which has no entry of its own). ``--untimed`` entries get the warm-up
pass only (their WER and hypotheses on the same utterances, no time: those too slow to
repeat here; time them in a run of their own on fewer utterances). An entry whose load or
warm-up fails is reported with its error and left out of the repeats.

    python benchmarks/runtimes.py --model ~/.cache/whisper-hf/base \
        --archive ../shared/data/librispeech-mini/test-clean.tar.gz --utterances 24 --repeats 5
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))

import yaml  # noqa: E402
from common import loadavg, split_parser  # noqa: E402

from whisper_ptq.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from whisper_ptq.data import extract_split  # noqa: E402
from whisper_ptq.features import compute_features  # noqa: E402
from whisper_ptq import provenance  # noqa: E402
from whisper_ptq.modeling import set_threads  # noqa: E402
from whisper_ptq.quantizers import get  # noqa: E402
from whisper_ptq.scoring import score_rows  # noqa: E402
from whisper_ptq.decode import run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIGS = ("config.yaml", "examples/torchao-int4-cpu.yaml")  # where ENTRIES are defined
ENTRIES = ["fp32", "torch-int8-dyn", "ct2-fp32", "ct2-int8", "torchao-int8wo", "torchao-int8dyn",
           "torchao-int8dyn-compiled", "torchao-int4wo", "torchao-int4wo-compiled"]


def main(argv=None):
    p = split_parser(__doc__, repeats=5, out=Path(__file__).with_name("results_runtimes.json"))
    p.add_argument("--entries", default=",".join(ENTRIES))
    p.add_argument("--untimed", default="", help="entries transcribed once, untimed (WER only)")
    a = p.parse_args(argv)
    from transformers import WhisperTokenizer

    untimed = [n for n in a.untimed.split(",") if n]
    names = a.entries.split(",") + untimed
    if names[0] != "fp32":
        p.error("--entries must start with fp32 (the ratios' denominator)")
    config = {}
    for f in CONFIGS:
        config.update(yaml.safe_load((REPO / f).read_text())["entries"])
    unknown = [n for n in names if n.removesuffix("+compile") not in config]
    if unknown:
        p.error(f"not entries of {' or '.join(CONFIGS)}: {unknown}")
    threads = set_threads(a.threads)
    decoding = {"batch_size": a.batch_size, "max_new_tokens": 440, "language": "en",
                "task": "transcribe"}
    tmp = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    split_dir = extract_split(a.archive, a.split, tmp / a.split)
    features, manifest = tmp / "f.safetensors", tmp / "m.jsonl"
    compute_features(split_dir, a.model, features, manifest, a.split)
    tokenizer = WhisperTokenizer.from_pretrained(a.model)

    def transcribe(name):
        return run(models[name], tokenizer, features, manifest, "cpu", decoding,
                   limit=a.utterances, split=a.split, threads=threads,
                   timing={"warmup_batches": 0}, progress=False)

    models, metas, warmup, errors, compiled, warm_rows = {}, {}, {}, {}, set(), {}
    for name in names:
        base = name.removesuffix("+compile")
        q = get(config[base]["library"])
        try:
            entry = q.validate(base, {**config[base], **({"compile": True} if base != name else {})})
            if entry.get("compile"):
                compiled.add(name)
            metas[name] = save_checkpoint(base, entry, a.model, tmp / name)
            models[name], _ = load_checkpoint(tmp / name, a.model, "cpu")
            load = loadavg()
            t0 = time.perf_counter()
            warm_rows[name], _ = transcribe(name)  # the warm-up pass, untimed in the results
            warmup[name] = {"seconds": time.perf_counter() - t0, "loadavg_before": load,
                            "loadavg_after": loadavg()}
        except Exception as e:  # noqa: BLE001 - reported, the other entries still run
            if name == "fp32":
                raise
            errors[name] = "".join(traceback.format_exception_only(e)).strip()
            models.pop(name, None)
            print(f"{name}: FAILED {errors[name]}", flush=True)
            continue
        print(f"{name}: {metas[name].bytes_on_disk / 1e6:.1f} MB, warm-up pass "
              f"{warmup[name]['seconds']:.1f} s (load {load[0]:.2f})", flush=True)
    names = [n for n in names if n in models and n not in untimed]

    samples = {n: [] for n in names}
    texts = {}
    loads = []
    for r in range(a.repeats):
        before = loadavg()
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            rows, timing = transcribe(name)
            samples[name].append({k: timing[k] for k in ("compute_seconds", "encoder_seconds",
                                                         "decoder_seconds", "rtf")})
            texts.setdefault(name, rows)
            print(f"repeat {r} {name}: {timing['compute_seconds']:.2f} s "
                  f"(load {loadavg()[0]:.2f})", flush=True)
        loads.append({"before": before, "after": loadavg(), "order": order})
        # the raw samples so far, in case a later repeat dies (the summary replaces it)
        a.out.with_suffix(".partial.json").write_text(json.dumps(
            {"samples": samples, "loadavg_repeats": loads, "warmup": warmup}, indent=1))
    audio = sum(r["duration"] for r in texts["fp32"])
    summary = {}
    for name in names:
        secs = [s["compute_seconds"] for s in samples[name]]
        ratios = [s["compute_seconds"] / f["compute_seconds"]
                  for s, f in zip(samples[name], samples["fp32"])]
        summary[name] = {
            "wer": score_rows(texts[name])["wer"],
            "bytes_on_disk": metas[name].bytes_on_disk,
            "linear_ratio": metas[name].linear_bytes / metas[name].fp32_linear_bytes,
            "median_seconds": statistics.median(secs),
            "median_rtf": statistics.median(secs) / audio,
            "median_encoder_seconds": statistics.median(s["encoder_seconds"] for s in samples[name]),
            "median_decoder_seconds": statistics.median(s["decoder_seconds"] for s in samples[name]),
            "time_ratio_vs_fp32": {"median": statistics.median(ratios), "min": min(ratios),
                                   "max": max(ratios)},
            "ratios_by_repeat": ratios,
            "hypotheses_equal_to_fp32": sum(x["hypothesis"] == y["hypothesis"]
                                            for x, y in zip(texts["fp32"], texts[name])),
            "warmup_pass_seconds": warmup[name]["seconds"],
            # compile happens in the warm-up pass only: its excess over a timed pass
            "compile_seconds": (warmup[name]["seconds"] - statistics.median(secs)
                                if name in compiled else None),
        }
    unt = {}
    for name in untimed:
        if name in warm_rows:
            rows = warm_rows[name]
            unt[name] = {"wer": score_rows(rows)["wer"], "bytes_on_disk": metas[name].bytes_on_disk,
                         "hypotheses_equal_to_fp32": sum(x["hypothesis"] == y["hypothesis"]
                                                         for x, y in zip(texts["fp32"], rows)),
                         "warmup_pass_seconds": warmup[name]["seconds"]}
    differ = []
    if "ct2-fp32" in texts:
        differ = [{"id": x["id"], "fp32": x["hypothesis"], "ct2-fp32": y["hypothesis"]}
                  for x, y in zip(texts["fp32"], texts["ct2-fp32"]) if x["hypothesis"] != y["hypothesis"]]
    out = {"model": str(a.model), "utterances": len(texts["fp32"]), "audio_seconds": audio,
           "threads": threads, "batch_size": a.batch_size, "repeats": a.repeats,
           "loadavg_repeats": loads, "warmup": warmup, "failed": errors,
           "summary": summary, "untimed": unt, "samples": samples,
           "utterance_ids": [r["id"] for r in texts["fp32"]],
           "ct2_fp32_differences": differ,
           "provenance": provenance.collect(threads)}
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    a.out.with_suffix(".partial.json").unlink(missing_ok=True)
    print(f"{'entry':26} {'WER':>6} {'=fp32':>5} {'MB':>7} {'RTF':>7} {'enc s':>7} {'dec s':>7} "
          f"{'warm-up s':>9} {'× fp32 time (min–max)':>24}")
    n = len(texts["fp32"])
    for name, s in summary.items():
        t = s["time_ratio_vs_fp32"]
        print(f"{name:26} {s['wer']:6.2f} {s['hypotheses_equal_to_fp32']:2}/{n:<2} "
              f"{s['bytes_on_disk'] / 1e6:7.1f} {s['median_rtf']:7.4f} "
              f"{s['median_encoder_seconds']:7.2f} {s['median_decoder_seconds']:7.2f} "
              f"{s['warmup_pass_seconds']:9.1f} {t['median']:8.3f} ({t['min']:.3f}–{t['max']:.3f})")
    for name, u in unt.items():
        print(f"{name:26} {u['wer']:6.2f} {u['hypotheses_equal_to_fp32']:2}/{n:<2} "
              f"{u['bytes_on_disk'] / 1e6:7.1f}  untimed (warm-up pass {u['warmup_pass_seconds']:.1f} s)")
    for name, err in errors.items():
        print(f"{name}: failed: {err}")
    print(f"ct2-fp32 hypotheses differing from fp32: {len(differ)} of {len(texts['fp32'])}")
    print(f"load average before / after each repeat: {[(x['before'][0], x['after'][0]) for x in loads]}")


if __name__ == "__main__":
    main()
