"""What the temperature fallback (decoding.fallback) costs where it sends nothing back.

Both arms decode the same utterances with the same loaded model through the transcribe
step's loop (``decode.run``): greedy, and greedy with the fallback's rule, whose greedy pass
also records each token's log-probability. Per repeat (alternating which arm goes first):
each arm's decoder seconds and total timed seconds, the paired ratio (fallback / greedy),
/proc/loadavg before it, how many hypotheses the rule sampled again, and whether the two
arms' hypotheses are the same. On clean read speech with real weights the rule should send
none back, so the ratio is the cost of reading the log-probabilities.

    python benchmarks/fallback_cost.py --model ~/.cache/whisper-hf/base \\
        --archive ../shared/data/librispeech-mini/test-clean.tar.gz --utterances 16 --repeats 5
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from common import loadavg, split_parser  # noqa: E402

from whisper_ptq import provenance  # noqa: E402
from whisper_ptq.data import extract_split  # noqa: E402
from whisper_ptq.decode import run  # noqa: E402
from whisper_ptq.features import compute_features  # noqa: E402
from whisper_ptq.modeling import load_fp32, set_threads  # noqa: E402

ARMS = {"greedy": {}, "fallback": {"fallback": {}}}


def main(argv=None):
    p = split_parser(__doc__, repeats=5, out=Path(__file__).with_name("results_fallback_cost.json"))
    p.set_defaults(utterances=16)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="the decoding's max_new_tokens (default: the schema's)")
    a = p.parse_args(argv)
    from transformers import WhisperTokenizer

    threads = set_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-fallback-"))
    split_dir = extract_split(a.archive, a.split, tmp / a.split)
    compute_features(split_dir, a.model, tmp / "f.st", tmp / "m.jsonl", a.split)
    model, tokenizer = load_fp32(a.model), WhisperTokenizer.from_pretrained(a.model)
    decoding = {"batch_size": a.batch_size}
    if a.max_new_tokens:
        decoding["max_new_tokens"] = a.max_new_tokens

    samples = {arm: [] for arm in ARMS}
    repeats = []
    for r in range(a.repeats):
        order = list(ARMS) if r % 2 == 0 else list(ARMS)[::-1]
        repeats.append({"order": order, "loadavg": loadavg()})
        texts = {}
        for arm in order:
            rows, timing = run(model, tokenizer, tmp / "f.st", tmp / "m.jsonl", "cpu",
                               {**decoding, **ARMS[arm]}, limit=a.utterances, split=a.split,
                               progress=False)
            texts[arm] = [row["hypothesis"] for row in rows]
            samples[arm].append({k: timing[k] for k in ("decoder_seconds", "compute_seconds")})
            if arm == "fallback":
                repeats[-1]["sampled_again"] = timing["fallback_utterances"]
        repeats[-1]["same_hypotheses"] = texts["greedy"] == texts["fallback"]
    ratios = {k: [f[k] / g[k] for f, g in zip(samples["fallback"], samples["greedy"])]
              for k in ("decoder_seconds", "compute_seconds")}
    result = {
        "model": a.model.name, "split": a.split, "utterances": len(texts["greedy"]),
        "batch_size": a.batch_size, "threads": threads, "repeats": repeats, "samples": samples,
        "ratio_fallback_over_greedy": ratios,
        "median_ratio": {k: statistics.median(v) for k, v in ratios.items()},
        "loadavg_after": loadavg(), "cpu": provenance.cpu_info()["model"],
    }
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{a.model.name}, {result['utterances']} utterances in batches of {a.batch_size}, "
          f"{threads} threads: fallback / greedy, decoder seconds per repeat "
          f"{', '.join(f'{x:.3f}' for x in ratios['decoder_seconds'])} (median "
          f"{result['median_ratio']['decoder_seconds']:.3f}); timed seconds median "
          f"{result['median_ratio']['compute_seconds']:.3f}")
    print(f"  sampled again per repeat {[r['sampled_again'] for r in repeats]}; same hypotheses "
          f"{[r['same_hypotheses'] for r in repeats]}; loadavg before repeats "
          f"{[r['loadavg'][0] for r in repeats]}")


if __name__ == "__main__":
    main()
