"""Length-sorted batches against manifest (id) order: speed and fp32 WER (issue 10).

The pipeline batches a split's utterances longest first (whisper_ptq.decode.ordered_rows),
so a batch holds transcripts of similar length and fewer decoder steps go to padding. This
compares it with the previous order (utterance id), the same utterances and batch size:

* speed: fp32 transcription of one split, both orders in every repeat (alternating which
  goes first), timed seconds as the pipeline times them (encoder + generate, warm-up batch
  untimed); the paired ratio manifest-order / sorted per repeat, its median, and /proc/loadavg
  before each repeat;
* WER: fp32 on every split given, both orders, with S/D/I and how many hypotheses differ
  (a batch's padding may change greedy decoding numerically).

    python benchmarks/sorted_batches.py --model ~/.cache/whisper-hf/tiny.en \\
        --mini ../shared/data/librispeech-mini --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))

from whisper_ptq.data import extract_split  # noqa: E402
from whisper_ptq.features import compute_features  # noqa: E402
from whisper_ptq.modeling import load_fp32, set_threads  # noqa: E402
from whisper_ptq.scoring import score_rows  # noqa: E402
from whisper_ptq.decode import run  # noqa: E402
from common import loadavg  # noqa: E402

ARMS = {"sorted": True, "manifest_order": False}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--mini", required=True, type=Path, help="mirror with <split>.tar.gz")
    p.add_argument("--splits", nargs="+", default=["test-clean", "test-other"])
    p.add_argument("--speed-split", default="test-clean")
    p.add_argument("--speed-limit", type=int, default=64,
                   help="utterances of the speed split timed (speakers round-robin)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size of the WER runs")
    p.add_argument("--speed-batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("sorted_batches.json"))
    a = p.parse_args(argv)
    from transformers import WhisperTokenizer

    threads = set_threads(a.threads)
    decoding = {"batch_size": a.batch_size, "max_new_tokens": 440}
    tmp = Path(tempfile.mkdtemp(prefix="bench-sorted-"))
    caches = {}
    for split in a.splits:
        split_dir = extract_split(a.mini / f"{split}.tar.gz", split, tmp / split)
        caches[split] = (tmp / f"{split}.st", tmp / f"{split}.jsonl")
        compute_features(split_dir, a.model, *caches[split], split)
    model, tokenizer = load_fp32(a.model), WhisperTokenizer.from_pretrained(a.model)

    def transcribe(split, sort, limit=None, batch_size=a.batch_size):
        return run(model, tokenizer, *caches[split], "cpu", {**decoding, "batch_size": batch_size},
                   split=split, limit=limit, threads=threads, progress=False, sort=sort)

    # speed: paired, interleaved (alternating which order goes first)
    speed = {"loadavg": [], **{arm: [] for arm in ARMS}, "decoder_seconds": {a: [] for a in ARMS},
             "generated_tokens": {}}
    for r in range(a.repeats):
        speed["loadavg"].append(loadavg())
        for arm in (list(ARMS) if r % 2 == 0 else list(ARMS)[::-1]):
            rows, t = transcribe(a.speed_split, ARMS[arm], a.speed_limit, a.speed_batch_size)
            speed[arm].append(t["compute_seconds"])
            speed["decoder_seconds"][arm].append(t["decoder_seconds"])
            speed["generated_tokens"][arm] = t["generated_tokens"]
            speed["audio_seconds"] = t["audio_seconds"]
            speed["utterances"] = t["utterances"]
    speed["loadavg_after"] = loadavg()
    hyps = {}
    ratios = [u / s for u, s in zip(speed["manifest_order"], speed["sorted"])]

    wer = {}
    for split in a.splits:
        for arm, sort in ARMS.items():
            if (split, arm) not in hyps:
                hyps[(split, arm)] = transcribe(split, sort)[0]
        s, u = (score_rows(hyps[(split, arm)]) for arm in ARMS)
        by_id = {r["id"]: r["hypothesis"] for r in hyps[(split, "manifest_order")]}
        differ = [r["id"] for r in hyps[(split, "sorted")] if by_id[r["id"]] != r["hypothesis"]]
        wer[split] = {
            **{arm: {"wer": sc["wer"], "S": sc["words"]["substitutions"],
                     "D": sc["words"]["deletions"], "I": sc["words"]["insertions"],
                     "ref_words": sc["words"]["n"]} for arm, sc in zip(ARMS, (s, u))},
            "dwer_sorted_minus_manifest_order": s["wer"] - u["wer"],
            "utterances": len(by_id),
            "hypotheses_differ": differ,
        }
    result = {
        "model": a.model.name, "batch_size": a.batch_size, "threads": threads,
        "speed_batch_size": a.speed_batch_size,
        "repeats": a.repeats, "speed_split": a.speed_split,
        "speed_utterances": speed["utterances"],
        "cpu": Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(": \t"),
        "speed": speed, "ratio_manifest_order_over_sorted": ratios,
        "median_ratio": statistics.median(ratios), "wer": wer,
    }
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"speed ({a.speed_split}, {result['speed_utterances']} utts, batch {a.speed_batch_size}, "
          f"{threads} threads): manifest-order / sorted timed seconds per repeat "
          f"{', '.join(f'{x:.3f}' for x in ratios)}; median {result['median_ratio']:.3f}")
    print(f"  sorted {[round(x, 2) for x in speed['sorted']]} s, manifest order "
          f"{[round(x, 2) for x in speed['manifest_order']]} s; loadavg {speed['loadavg']}")
    for split, w in wer.items():
        print(f"{split}: WER sorted {w['sorted']['wer']:.4f} (S/D/I {w['sorted']['S']}/"
              f"{w['sorted']['D']}/{w['sorted']['I']}), manifest order {w['manifest_order']['wer']:.4f} "
              f"(S/D/I {w['manifest_order']['S']}/{w['manifest_order']['D']}/{w['manifest_order']['I']}), "
              f"difference {w['dwer_sorted_minus_manifest_order']:+.4f}; "
              f"{len(w['hypotheses_differ'])} of {w['utterances']} hypotheses differ")


if __name__ == "__main__":
    main()
