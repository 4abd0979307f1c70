"""What a random-weight row's time is made of (check.py `--sdpa`, `--profile-entries`).

Two tools for the question the H200 left open (docs/results/gpu/README.md): fp16 whisper-
large-v3 decoding at 2.5x fp32's time, where half precision should be the faster.

* `--sdpa flash,efficient,math`: only these scaled-dot-product-attention backends may run.
  On Hopper, torch 2.11 with its bundled cuDNN (newer than 9.15) prefers cuDNN attention for
  half precision, which builds an execution graph per new shape; a greedy decoder's key
  length grows by one each step, so a batch size's first pass meets a new shape every step.
* profiled passes: two passes at a batch size no other pass used (the first meets every
  shape anew, the second repeats it), under torch's profiler; each keeps its wall time and
  the operators and GPU kernels that took the most time.
"""

from __future__ import annotations

from contextlib import contextmanager

SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")
_TORCH_NAME = {"flash": "flash", "efficient": "mem_efficient", "cudnn": "cudnn", "math": "math"}
TOP = 6  # operators and kernels kept per pass


def parse_sdpa(text: str) -> list[str]:
    """``--sdpa``'s comma list, checked (check.py's argument type; absent: torch's default)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SDPA_BACKENDS]
    if unknown or not names:
        raise SystemExit(f"check: --sdpa {text!r}: want a comma list of {', '.join(SDPA_BACKENDS)}")
    return names


@contextmanager
def sdpa_allowed(names: list[str] | None):
    """Within: only ``names`` may run (None: torch's flags as they are); the flags are put
    back on leaving, so a test calling the check leaves later ones as they were."""
    import torch

    flags = {n: getattr(torch.backends.cuda, f"{_TORCH_NAME[n]}_sdp_enabled")()
             for n in SDPA_BACKENDS}
    try:
        for name in SDPA_BACKENDS:
            if names is not None:
                getattr(torch.backends.cuda, f"enable_{_TORCH_NAME[name]}_sdp")(name in names)
        yield
    finally:
        for name, on in flags.items():
            getattr(torch.backends.cuda, f"enable_{_TORCH_NAME[name]}_sdp")(on)


def sdpa_state() -> dict:
    """The backends allowed now, and torch's priority order where it tells it."""
    import torch

    enabled = [n for n in SDPA_BACKENDS
               if getattr(torch.backends.cuda, f"{_TORCH_NAME[n]}_sdp_enabled")()]
    try:  # a private call: absent in some builds
        from torch.nn.attention import SDPBackend

        order = [SDPBackend(i).name.lower() for i in torch._C._get_sdp_priority_order()]
    except (AttributeError, ValueError, TypeError):
        order = None
    return {"enabled": enabled, "priority": order}


def label(shape: str, names: list[str] | None) -> str:
    """A random-weight table's model column: rows measured under other backends stay apart."""
    return f"{shape} (random)" if names is None else f"{shape} (random, sdpa {'+'.join(names)})"


def top(events, attr: str) -> list[dict]:
    rows = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:TOP]
    return [{"name": e.key[:100], "ms": round(getattr(e, attr) / 1e3, 3), "calls": e.count}
            for e in rows if getattr(e, attr) > 0]


def summarize(averages, device: str) -> dict:
    """A profiler's key averages in a few numbers: GPU kernel time (its busy seconds, against
    the pass's wall time: a decoder whose GPU idles is held by the host), the operators with
    the most self CPU time and the kernels with the most GPU time."""
    from torch.autograd import DeviceType

    kernels = [e for e in averages if e.device_type == DeviceType.CUDA]
    host = [e for e in averages if e.device_type == DeviceType.CPU]
    # no kernel events on CUDA: the profiler had no CUPTI; None, not a GPU that idled
    return {"gpu_busy_s": (sum(e.self_device_time_total for e in kernels) / 1e6
                           if device == "cuda" and kernels else None),
            "cpu_ops": top(host, "self_cpu_time_total"),
            "kernels": top(kernels, "self_device_time_total")}


def profiled_passes(model, tokenizer, device: str, decoding: dict, batch: int, mels: int,
                    tokens: int, measure) -> dict:
    """Two passes of ``batch`` random utterances, ``tokens`` new tokens each, each under the
    profiler (``measure``: check.py's one timed batch). The model's minimum length is set to
    ``tokens`` for them and restored after."""
    from torch.profiler import ProfilerActivity, profile

    from whisper_ptq.decode import make_transcriber

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    held = model.generation_config.min_new_tokens
    model.generation_config.min_new_tokens = tokens
    try:
        tr = make_transcriber(model, tokenizer, device, {**decoding, "max_new_tokens": tokens})
        passes = []
        for which in ("first", "repeat"):
            with profile(activities=activities) as prof:
                m = measure(tr, batch, mels, device)
            passes.append({"pass": which, "seconds": m["seconds"], "encoder_s": m["encoder_s"],
                           "decoder_s": m["decoder_s"], "tokens": m["tokens"],
                           **summarize(prof.key_averages(), device)})
    finally:
        model.generation_config.min_new_tokens = held
    return {"batch": batch, "tokens": tokens, "passes": passes}


def markdown(rows: list[dict]) -> list[str]:
    """The profiled rows of a random-weight table, one block each."""
    lines = []
    for r in rows:
        p = r["profile"]
        if "error" in p:
            lines += [f"**{r['model']} {r['entry']}**: not profiled ({p['error']})", ""]
            continue
        lines += [f"**{r['model']} {r['entry']}**, batch {p['batch']}, {p['tokens']} new tokens "
                  "per utterance, under the profiler:", ""]
        for s in p["passes"]:
            busy = (f", GPU kernels {s['gpu_busy_s']:.2f} s" if s.get("gpu_busy_s") is not None
                    else "")
            ops = "; ".join(f"{o['name']} {o['ms']:.0f} ms ({o['calls']})" for o in s["cpu_ops"])
            lines.append(f"- {s['pass']} pass {s['seconds']:.2f} s (encoder {s['encoder_s']:.2f}, "
                         f"decoder {s['decoder_s']:.2f}){busy}; most self CPU time: {ops}")
            if s["kernels"]:
                ks = "; ".join(f"{k['name']} {k['ms']:.0f} ms ({k['calls']})" for k in s["kernels"])
                lines.append(f"  - most GPU time: {ks}")
        lines.append("")
    return lines
