"""Why torchao int4 weight-only is unusable for batched Whisper on CPU: one linear layer of
Whisper base (fc1, 512 -> 2048) in fp32 and as torchao's CPU int4 (``Int4OpaqueTensor``,
``_weight_int4pack_mm_for_cpu``, group size 128), for the row counts the pipeline feeds it:
a decoder step at batch 1 and 16 (1, 16 rows) and the encoder at batch 1 and 16 (1500 and
24000 rows: 1500 frames per 30 s window).

Each repeat times both layers on every shape, in an order rotated per repeat; the ratio
int4 / fp32 is paired within the repeat. /proc/loadavg is recorded before and after each
repeat.

    python benchmarks/int4_shapes.py --repeats 5 --out benchmarks/results_int4_shapes.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))

from common import loadavg  # noqa: E402

from whisper_ptq import provenance  # noqa: E402

ROWS = [1, 16, 1500, 24000]
IN, OUT = 512, 2048  # Whisper base: d_model, encoder/decoder ffn


def seconds(layer, x, min_s: float = 0.2) -> float:
    """Median seconds of one forward, over enough calls to last ``min_s`` (at least 3)."""
    import torch

    times = []
    with torch.no_grad():
        layer(x)  # first call: kernel selection, allocation
        while len(times) < 3 or sum(times) < min_s:
            t0 = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("results_int4_shapes.json"))
    a = p.parse_args(argv)
    import torch
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import quantize_

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    fp32 = torch.nn.Linear(IN, OUT)
    int4 = torch.nn.Sequential(torch.nn.Linear(IN, OUT))
    int4[0].load_state_dict(fp32.state_dict())
    quantize_(int4, PrototypeInt4WeightOnlyConfig(group_size=a.group_size))
    inputs = {m: torch.randn(m, IN) for m in ROWS}
    layers = {"fp32": fp32, "int4": int4}
    samples = {m: {k: [] for k in layers} for m in ROWS}
    loads = []
    for rep in range(a.repeats):
        order = [(m, k) for m in ROWS for k in layers]
        order = order[rep % len(order):] + order[:rep % len(order)]
        before = loadavg()
        for m, k in order:
            samples[m][k].append(seconds(layers[k], inputs[m]))
        loads.append({"before": before, "after": loadavg()})
        print(f"repeat {rep}: " + ", ".join(f"{m} rows int4/fp32 {samples[m]['int4'][-1] / samples[m]['fp32'][-1]:.1f}"
                                           for m in ROWS) + f" (load {loadavg()[0]:.2f})", flush=True)
    summary = {}
    for m in ROWS:
        ratios = [i / f for i, f in zip(samples[m]["int4"], samples[m]["fp32"])]
        summary[str(m)] = {"fp32_ms_median": 1000 * statistics.median(samples[m]["fp32"]),
                           "int4_ms_median": 1000 * statistics.median(samples[m]["int4"]),
                           "ratio_int4_over_fp32": {"median": statistics.median(ratios),
                                                    "min": min(ratios), "max": max(ratios)}}
    out = {"layer": {"in": IN, "out": OUT, "group_size": a.group_size}, "threads": a.threads,
           "repeats": a.repeats, "summary": summary, "samples": samples, "loadavg_repeats": loads,
           "provenance": provenance.collect(a.threads)}
    a.out.write_text(json.dumps(out, indent=1))
    for m, s in summary.items():
        r = s["ratio_int4_over_fp32"]
        print(f"{m:>6} rows: fp32 {s['fp32_ms_median']:.2f} ms, int4 {s['int4_ms_median']:.2f} ms, "
              f"int4/fp32 {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})")


if __name__ == "__main__":
    main()
