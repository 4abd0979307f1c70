"""Benchmarks of the measurement harness on real weights and real audio (issue 5).

(a) harness overhead: the pipeline's transcription (``whisper_ptq.decode.run``) against a
    bare ``model.generate`` loop over the same cached features and batch size;
(b) PyTorch dynamic int8 vs fp32 transcription speed on CPU;
(c) the features step (once per split) against the transcribe step (once per entry × device).

Each measurement is repeated (interleaved, so load changes hit all methods alike) and the
median reported, with /proc/loadavg before each repeat. Usage:

    python benchmarks/bench.py --model ~/.cache/whisper-hf/base \
        --archive ../shared/data/librispeech-mini/test-clean.tar.gz --utterances 24 --repeats 3
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))

import torch  # noqa: E402
from common import loadavg, split_parser  # noqa: E402

from whisper_ptq.data import extract_split  # noqa: E402
from whisper_ptq.features import FeatureCache, compute_features, load_manifest, select  # noqa: E402
from whisper_ptq.modeling import load_fp32, set_threads  # noqa: E402
from whisper_ptq.quantizers import get  # noqa: E402
from whisper_ptq.decode import generation_kwargs, make_batches, run  # noqa: E402


def bare_loop(model, tokenizer, cache, rows, batch_size, decoding) -> float:
    """The simplest correct loop: stack, generate, decode; one untimed warm-up batch."""
    kwargs = generation_kwargs(model, decoding)
    batches = make_batches(rows, batch_size)
    with torch.no_grad():
        model.generate(torch.stack([cache.get(r["id"]) for r in batches[0]]), **kwargs)
        t0 = time.perf_counter()
        for batch in batches:
            out = model.generate(torch.stack([cache.get(r["id"]) for r in batch]), **kwargs)
            tokenizer.batch_decode(out, skip_special_tokens=True)
        return time.perf_counter() - t0


def main(argv=None):
    p = split_parser(__doc__, repeats=3, out=Path(__file__).with_name("results.json"))
    a = p.parse_args(argv)
    from transformers import WhisperTokenizer

    threads = set_threads(a.threads)
    decoding = {"batch_size": a.batch_size, "max_new_tokens": 440}
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    split_dir = extract_split(a.archive, a.split, tmp / a.split)

    feature_seconds = []
    for i in range(a.repeats):
        t0 = time.perf_counter()
        compute_features(split_dir, a.model, tmp / f"f{i}.st", tmp / f"m{i}.jsonl", a.split)
        feature_seconds.append(time.perf_counter() - t0)
    all_rows = load_manifest(tmp / "m0.jsonl")
    rows = select(all_rows, a.utterances)
    cache = FeatureCache(tmp / "f0.st")
    tokenizer = WhisperTokenizer.from_pretrained(a.model)
    fp32 = load_fp32(a.model)
    q = get("torch")
    int8 = q.quantize(load_fp32(a.model), q.validate("torch-int8-dyn", {"library": "torch", "scheme": "int8-dynamic"})).model

    samples = {"pipeline_fp32": [], "bare_fp32": [], "pipeline_int8": [], "loadavg": []}
    for _ in range(a.repeats):
        samples["loadavg"].append(loadavg()[0])
        _, t = run(fp32, tokenizer, tmp / "f0.st", tmp / "m0.jsonl", "cpu", decoding,
                   limit=a.utterances, split=a.split, threads=threads, progress=False)
        samples["pipeline_fp32"].append(t["compute_seconds"])
        samples["bare_fp32"].append(bare_loop(fp32, tokenizer, cache, rows, a.batch_size, decoding))
        _, t = run(int8, tokenizer, tmp / "f0.st", tmp / "m0.jsonl", "cpu", decoding,
                   limit=a.utterances, split=a.split, threads=threads, progress=False)
        samples["pipeline_int8"].append(t["compute_seconds"])
    med = {k: statistics.median(v) for k, v in samples.items()}
    audio = sum(r["duration"] for r in rows)
    all_audio = sum(r["duration"] for r in all_rows)
    result = {
        "model": a.model.name, "utterances": len(rows), "audio_seconds": audio,
        "batch_size": a.batch_size, "threads": threads, "repeats": a.repeats,
        "cpu": Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(": \t")
        if Path("/proc/cpuinfo").exists() else None,
        "samples": samples, "medians": med,
        "a_harness_over_bare": med["pipeline_fp32"] / med["bare_fp32"],
        "b_int8_speedup_over_fp32": med["pipeline_fp32"] / med["pipeline_int8"],
        "rtf_fp32": med["pipeline_fp32"] / audio, "rtf_int8": med["pipeline_int8"] / audio,
        "c_features_seconds_per_split": statistics.median(feature_seconds),
        "c_features_utterances": len(all_rows), "c_features_audio_seconds": all_audio,
        "c_features_rtf": statistics.median(feature_seconds) / all_audio,
        "c_transcribe_fp32_seconds_per_audio_second": med["pipeline_fp32"] / audio,
    }
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| measurement | median of {a.repeats} | detail |\n|---|---|---|")
    print(f"| (a) pipeline / bare generate loop | {result['a_harness_over_bare']:.3f}× | "
          f"{med['pipeline_fp32']:.2f} s vs {med['bare_fp32']:.2f} s, {len(rows)} utts, batch {a.batch_size} |")
    print(f"| (b) fp32 / torch int8 dynamic time | {result['b_int8_speedup_over_fp32']:.2f}× | "
          f"RTF {result['rtf_fp32']:.3f} vs {result['rtf_int8']:.3f}, {threads} threads |")
    print(f"| (c) features step, whole split | {result['c_features_seconds_per_split']:.1f} s | "
          f"{len(all_rows)} utts, feature RTF {result['c_features_rtf']:.4f} vs transcribe RTF "
          f"{result['rtf_fp32']:.3f} (fp32) per entry × device |")
    print(f"loadavg before repeats: {samples['loadavg']}")


if __name__ == "__main__":
    main()
