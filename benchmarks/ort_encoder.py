"""ONNX Runtime's exported encoder on one batch: run on the whole batch at once (as before
f7c752f) or in chunks of ``--rows`` utterances (``quantizers.ort.encode``; by default the
transcriber's own ``encoder_rows``). Time and peak RSS of each way, each in its own process
(peak RSS is per process).

Each repeat runs both ways, in an order rotated per repeat; the ratio chunks / whole batch
is paired within the repeat. A process loads the checkpoint's encoder, encodes the
batch once untimed (allocation, kernel choice), then once timed. The input is random
log-mel frames: the encoder's cost does not depend on what they hold (always 30 s windows).
/proc/loadavg is recorded before each repeat.

    python benchmarks/ort_encoder.py --ckpt results/base/checkpoints/ort-int8-dyn-pc \\
        --repeats 5 --out benchmarks/results_ort_encoder.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))

from common import loadavg  # noqa: E402

WAYS = ("whole-batch", "chunks")


def child(args) -> None:
    import numpy as np

    from whisper_ptq.quantizers import ort

    session = ort.load_session(args.ckpt / "encoder.onnx", args.threads)
    n_mels = session.get_inputs()[0].shape[1]
    feats = (np.random.default_rng(0).standard_normal((args.batch_size, n_mels, 3000))
             * 0.5).astype(np.float32)

    rows = (args.batch_size if args.child == "whole-batch"
            else args.rows or ort.encoder_rows(session.get_outputs()[0].shape))

    def once():
        if args.child == "whole-batch":  # the transcriber before f7c752f
            return session.run(None, {"input_features": feats})
        return list(ort.encode(session, feats, rows).values())

    once()
    t0 = time.perf_counter()
    out = once()
    seconds = time.perf_counter() - t0
    print(json.dumps({"rows": rows, "seconds": seconds,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "checksum": float(sum(o[:, :, :8].astype(np.float64).sum() for o in out))}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, type=Path, help="an ORT checkpoint folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=0,
                   help="utterances per encoder call (0: the transcriber's encoder_rows)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results_ort_encoder.json"))
    p.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    repeats = []
    for r in range(args.repeats):
        load = loadavg()
        runs = {}
        for way in (WAYS if r % 2 == 0 else WAYS[::-1]):
            proc = subprocess.run([sys.executable, __file__, "--child", way, "--ckpt", str(args.ckpt),
                                   "--batch-size", str(args.batch_size),
                                   "--threads", str(args.threads), "--rows", str(args.rows)],
                                  capture_output=True, text=True, check=True)
            runs[way] = json.loads(proc.stdout.strip().splitlines()[-1])
        ratio = runs["chunks"]["seconds"] / runs["whole-batch"]["seconds"]
        repeats.append({"loadavg": load, "runs": runs, "time_ratio": ratio})
        print(f"repeat {r}: load {load[0]:.2f}, " + ", ".join(
            f"{w} ({runs[w]['rows']} rows) {runs[w]['seconds']:.2f} s "
            f"{runs[w]['peak_rss_mb']:.0f} MB" for w in WAYS)
            + f", chunks / whole batch {ratio:.3f}", flush=True)
    ratios = [x["time_ratio"] for x in repeats]
    summary = {"time_ratio": {"median": statistics.median(ratios), "min": min(ratios),
                              "max": max(ratios)},
               **{f"peak_rss_mb_{w}": statistics.median(x["runs"][w]["peak_rss_mb"]
                                                        for x in repeats) for w in WAYS}}
    args.out.write_text(json.dumps({"ckpt": str(args.ckpt), "batch_size": args.batch_size,
                                    "rows": repeats[0]["runs"]["chunks"]["rows"],
                                    "threads": args.threads, "summary": summary,
                                    "repeats": repeats}, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
