"""Quanto static-activation calibration: the frozen model against quanto's own order.

whisper_ptq.quantizers.quanto freezes the quantized model, then calibrates it; quanto's
examples calibrate first and freeze after, so every calibration forward quantizes each
layer's weight again. Both arms here quantize the same fp32 model with the same entry, then
run the module's calibration (``_calibrate``) on the same real utterances; only the place of
``freeze`` differs. Per repeat (alternating which arm goes first): each arm's calibration
seconds, the paired ratio (quanto's order / frozen first), /proc/loadavg before it; and
whether the two models are the same: activation scales, weights, and the layers whose
outputs calibration left float (saved beside the checkpoint, not in its state dict).

    python benchmarks/calibration.py --model ~/.cache/whisper-hf/tiny.en \\
        --archive ../shared/data/librispeech-mini/test-clean.tar.gz --utterances 8 --repeats 5
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))

import torch  # noqa: E402
from common import loadavg, split_parser  # noqa: E402

from whisper_ptq import provenance  # noqa: E402
from whisper_ptq.data import extract_split  # noqa: E402
from whisper_ptq.features import calibration_batches, compute_features  # noqa: E402
from whisper_ptq.modeling import load_fp32, set_threads  # noqa: E402
from whisper_ptq.quantizers import get  # noqa: E402
from whisper_ptq.quantizers import quanto as qq  # noqa: E402

ARMS = ("quanto_order", "frozen_first")


def calibrated(model_dir: Path, entry: dict, batches, arm: str):
    """(model, calibration seconds) of the entry calibrated in the arm's order."""
    import optimum.quanto as oq

    model = load_fp32(model_dir).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get("quanto").quantize_layers(model, entry)
        t0 = time.perf_counter()
        if arm == "frozen_first":
            oq.freeze(model)
        qq._calibrate(model, batches, qq._observer(entry))
        if arm == "quanto_order":
            oq.freeze(model)
        seconds = time.perf_counter() - t0
    return model, seconds


def same(a, b) -> bool:
    """Whether two quantized models are the same, as their checkpoints would say."""
    plain = lambda t: t.dequantize() if hasattr(t, "dequantize") else t  # noqa: E731
    sa, sb = a.state_dict(), b.state_dict()
    return (list(sa) == list(sb) and all(torch.equal(plain(sa[k]), plain(sb[k])) for k in sa)
            and qq._float_outputs(a) == qq._float_outputs(b))


def main(argv=None):
    p = split_parser(__doc__, repeats=5, out=Path(__file__).with_name("results_calibration.json"))
    p.set_defaults(utterances=8)
    p.add_argument("--scheme", default="int8-a8-static",
                   choices=["int8-a8-static", "float8-afp8-static"])
    a = p.parse_args(argv)
    threads = set_threads(a.threads)
    entry = get("quanto").validate("static", {"library": "quanto", "scheme": a.scheme})
    tmp = Path(tempfile.mkdtemp(prefix="bench-calib-"))
    split_dir = extract_split(a.archive, a.split, tmp / a.split)
    compute_features(split_dir, a.model, tmp / "f.st", tmp / "m.jsonl", a.split)
    ids, batches = calibration_batches(tmp / "f.st", tmp / "m.jsonl", a.utterances,
                                       a.batch_size, a.split)

    samples = {arm: [] for arm in ARMS}
    repeats = []
    for r in range(a.repeats):
        order = list(ARMS) if r % 2 == 0 else list(ARMS)[::-1]
        repeats.append({"order": order, "loadavg": loadavg()})
        models = {}
        for arm in order:
            models[arm], seconds = calibrated(a.model, entry, batches, arm)
            samples[arm].append(seconds)
        repeats[-1]["same_model"] = same(*(models[arm] for arm in ARMS))
        del models
    ratios = [q / f for q, f in zip(samples["quanto_order"], samples["frozen_first"])]
    result = {
        "model": a.model.name, "scheme": a.scheme, "observer": entry["observer"],
        "utterances": len(ids), "batch_size": a.batch_size, "max_new_tokens":
        qq.CALIBRATION_MAX_TOKENS, "threads": threads, "repeats": repeats, "samples": samples,
        "ratio_quanto_order_over_frozen_first": ratios, "median_ratio": statistics.median(ratios),
        "loadavg_after": loadavg(),
        "cpu": provenance.cpu_info()["model"],
    }
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{a.scheme} ({entry['observer']}), {len(ids)} utterances in batches of {a.batch_size}, "
          f"{threads} threads: quanto's order / frozen first, per repeat "
          f"{', '.join(f'{x:.2f}' for x in ratios)}; median {result['median_ratio']:.2f}x")
    for arm in ARMS:
        print(f"  {arm}: {[round(x, 1) for x in samples[arm]]} s")
    print(f"  same model every repeat: {all(r['same_model'] for r in repeats)}; loadavg before "
          f"repeats {[r['loadavg'][0] for r in repeats]}")


if __name__ == "__main__":
    main()
