"""Runtimes beside the PyTorch-side quantizers (issue 14): CTranslate2 and torchao entries
against fp32 and torch-int8-dyn, through the pipeline's own checkpoint and transcription code.

Every entry is quantized and loaded once (``save_checkpoint`` / ``load_checkpoint``), then
each repeat transcribes the same utterances with every entry in a rotated order (so load
changes hit all entries alike); in the first repeat each entry's ``run()`` does its untimed
warm-up batch first (where torch.compile compiles). Reported per entry: WER, RTF, encoder / decoder seconds, and
the paired ratio entry time / fp32 time of the same repeat (median, min, max), with
/proc/loadavg before each repeat. ct2-fp32's hypotheses are compared with fp32's one by one.

    python benchmarks/runtimes.py --model ~/.cache/whisper-hf/base \
        --archive ../shared/data/librispeech-mini/test-clean.tar.gz --utterances 24 --repeats 5
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
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
ENTRIES = ["fp32", "torch-int8-dyn", "ct2-fp32", "ct2-int8", "torchao-int8wo", "torchao-int8dyn",
           "torchao-int8dyn-compiled", "torchao-int4wo", "torchao-int4wo-compiled"]


def main(argv=None):
    p = split_parser(__doc__, repeats=5, out=Path(__file__).with_name("results_runtimes.json"))
    p.add_argument("--entries", default=",".join(ENTRIES))
    a = p.parse_args(argv)
    from transformers import WhisperTokenizer

    names = a.entries.split(",")
    if names[0] != "fp32":
        p.error("--entries must start with fp32 (the ratios' denominator)")
    config = yaml.safe_load((REPO / "config.yaml").read_text())["entries"]
    threads = set_threads(a.threads)
    decoding = {"batch_size": a.batch_size, "max_new_tokens": 440, "language": "en",
                "task": "transcribe"}
    tmp = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    split_dir = extract_split(a.archive, a.split, tmp / a.split)
    features, manifest = tmp / "f.safetensors", tmp / "m.jsonl"
    compute_features(split_dir, a.model, features, manifest, a.split)
    tokenizer = WhisperTokenizer.from_pretrained(a.model)

    models, metas = {}, {}
    for name in names:
        q = get(config[name]["library"])
        entry = q.validate(name, config[name])
        metas[name] = save_checkpoint(name, entry, a.model, tmp / name)
        models[name], _ = load_checkpoint(tmp / name, a.model, "cpu")
        print(f"{name}: {metas[name]['bytes_on_disk'] / 1e6:.1f} MB", flush=True)

    samples = {n: [] for n in names}
    texts = {}
    loads = []
    for r in range(a.repeats):
        loads.append(loadavg())
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            # warm-up (untimed; torch.compile compiles there) in the first repeat only
            rows, timing = run(models[name], tokenizer, features, manifest, "cpu", decoding,
                               limit=a.utterances, split=a.split, threads=threads,
                               warmup_batches=1 if r == 0 else 0, progress=False)
            samples[name].append({k: timing[k] for k in ("compute_seconds", "encoder_seconds",
                                                         "decoder_seconds", "rtf")})
            texts.setdefault(name, rows)
            print(f"repeat {r} {name}: {timing['compute_seconds']:.2f} s "
                  f"(load {loadavg()[0]:.2f})", flush=True)
    audio = sum(r["duration"] for r in texts["fp32"])
    summary = {}
    for name in names:
        secs = [s["compute_seconds"] for s in samples[name]]
        ratios = [s["compute_seconds"] / f["compute_seconds"]
                  for s, f in zip(samples[name], samples["fp32"])]
        summary[name] = {
            "wer": score_rows(texts[name])["wer"],
            "bytes_on_disk": metas[name]["bytes_on_disk"],
            "linear_ratio": metas[name]["linear_bytes"] / metas[name]["fp32_linear_bytes"],
            "median_seconds": statistics.median(secs),
            "median_rtf": statistics.median(secs) / audio,
            "median_encoder_seconds": statistics.median(s["encoder_seconds"] for s in samples[name]),
            "median_decoder_seconds": statistics.median(s["decoder_seconds"] for s in samples[name]),
            "time_ratio_vs_fp32": {"median": statistics.median(ratios), "min": min(ratios),
                                   "max": max(ratios)},
        }
    differ = []
    if "ct2-fp32" in texts:
        differ = [{"id": x["id"], "fp32": x["hypothesis"], "ct2-fp32": y["hypothesis"]}
                  for x, y in zip(texts["fp32"], texts["ct2-fp32"]) if x["hypothesis"] != y["hypothesis"]]
    out = {"model": str(a.model), "utterances": len(texts["fp32"]), "audio_seconds": audio,
           "threads": threads, "batch_size": a.batch_size, "repeats": a.repeats,
           "loadavg_before_repeats": loads, "summary": summary, "samples": samples,
           "ct2_fp32_differences": differ,
           "provenance": provenance.collect(threads)}
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{'entry':26} {'WER':>6} {'MB':>7} {'RTF':>7} {'enc s':>7} {'dec s':>7} {'× fp32 time (min–max)':>24}")
    for name, s in summary.items():
        t = s["time_ratio_vs_fp32"]
        print(f"{name:26} {s['wer']:6.2f} {s['bytes_on_disk'] / 1e6:7.1f} {s['median_rtf']:7.4f} "
              f"{s['median_encoder_seconds']:7.2f} {s['median_decoder_seconds']:7.2f} "
              f"{t['median']:8.3f} ({t['min']:.3f}–{t['max']:.3f})")
    print(f"ct2-fp32 hypotheses differing from fp32: {len(differ)} of {len(texts['fp32'])}")
    print(f"load average before each repeat: {loads}")


if __name__ == "__main__":
    main()
