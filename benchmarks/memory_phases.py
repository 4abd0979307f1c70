"""Where a transcription job's memory goes, phase by phase, per entry (CPU).

Each entry runs in fresh processes, as a transcribe job does: resident memory (anonymous and
file-backed apart) after the imports, after loading the checkpoint, after the warm-up batch,
the peak of the timed batches, and what stays resident after them once the allocator's free
memory is given back (``decode.release_free_memory``), with the bytes the model's own tensors
hold. Each entry runs twice per repeat, with the free memory also given back right after
loading and without: whether what a load freed (torch.ao builds the fp32 model before its
int8 copy) adds to the loop's peak.

    python benchmarks/memory_phases.py \\
        --checkpoints results/base/checkpoints --model data/models/base \\
        --features data/features/base/test-clean.safetensors \\
        --manifest data/features/base/test-clean.manifest.jsonl \\
        --entries fp32,torch-int8-dyn,quanto-int8 --utterances 16 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import loadavg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "workflow"))


def rss() -> dict:
    """Resident MiB now (total, anonymous, file-backed) and the peak mark."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in fields:
            out[fields[key]] = int(line.split()[1]) / 1024
    return out


def tensor_mb(model) -> float | None:
    """MiB of the distinct storages behind the model's state dict (None: not a torch model)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return None
    seen = {}
    for t in _plain(list(model.state_dict().values())):
        try:
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        except (RuntimeError, NotImplementedError):  # quantized tensors (torch.ao)
            seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values()) / 2**20


def _plain(t) -> list:
    """The plain tensors in ``t``: a tensor, a tensor subclass (quanto's, torchao's: its inner
    tensors) or a tuple / list of them (torch.ao's packed parameters); other values none."""
    import torch

    if isinstance(t, (list, tuple)):
        return [x for item in t for x in _plain(item)]
    if not isinstance(t, torch.Tensor):
        return []
    if type(t) in (torch.Tensor, torch.nn.Parameter) or not hasattr(t, "__tensor_flatten__"):
        return [t]
    return _plain([getattr(t, name) for name in t.__tensor_flatten__()[0]])


def child(args) -> dict:
    phases = {}
    import torch
    from transformers import WhisperTokenizer

    from whisper_ptq.checkpoint import load_checkpoint
    from whisper_ptq.decode import (make_batches, make_transcriber, release_free_memory,
                                    rss_peak_reset)
    from whisper_ptq.features import FeatureCache, load_manifest

    torch.set_num_threads(args.threads)
    phases["imports"] = rss()
    model, meta = load_checkpoint(args.checkpoint, args.model, "cpu")
    phases["loaded"] = rss()
    held = tensor_mb(model)
    if args.give_back:
        release_free_memory()
        phases["loaded, given back"] = rss()
    rows = load_manifest(args.manifest)[:args.utterances]  # the manifest's first ones
    cache = FeatureCache(args.features)
    batches = make_batches(rows, args.batch_size)
    tr = make_transcriber(model, WhisperTokenizer.from_pretrained(args.model), "cpu",
                          {"batch_size": args.batch_size})

    def run(batch):
        return tr(torch.stack([cache.get(r["id"]) for r in batch]))[0]

    run(batches[0])
    phases["warm"] = rss()
    rss_peak_reset()
    texts = [t for b in batches for t in run(b)]
    phases["loop"] = rss()
    release_free_memory()
    phases["after, given back"] = rss()
    return {"entry": meta.entry, "tensors_mb": held, "phases": phases, "texts": texts}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--entries", required=True)
    p.add_argument("--utterances", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="rounds over the entries, interleaved")
    p.add_argument("--out", type=Path, default=HERE / "results_memory_phases.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--give-back", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    common = [sys.executable, __file__, "--child", "--model", str(args.model), "--features",
              str(args.features), "--manifest", str(args.manifest), "--utterances",
              str(args.utterances), "--batch-size", str(args.batch_size), "--threads",
              str(args.threads), "--entries", args.entries, "--checkpoints",
              str(args.checkpoints)]
    results = []
    runs = [(repeat, entry, give_back) for repeat in range(args.repeats)
            for entry in args.entries.split(",") for give_back in (False, True)]
    for repeat, entry, give_back in runs:
        cmd = [*common, "--checkpoint", str(args.checkpoints / entry)]
        proc = subprocess.run(cmd + (["--give-back"] if give_back else []), capture_output=True,
                              text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"{entry}: {proc.stderr[-2000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r.update(give_back_after_load=give_back, repeat=repeat, loadavg=loadavg())
        results.append(r)
        ph = r["phases"]
        print(f"{entry:26s} give back={give_back!s:5s} " + "  ".join(
            f"{k}: {v['rss']:.0f} (anon {v['anon']:.0f})" for k, v in ph.items())
              + f"  loop peak {ph['loop']['peak']:.0f}  tensors {r['tensors_mb'] or 0:.0f}",
              flush=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
