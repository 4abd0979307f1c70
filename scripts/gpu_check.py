"""GPU check: quantize + transcribe the mini sets on CUDA and print WER / RTF / memory.

Runs fp32, fp16, Quanto int8, bitsandbytes nf4 and HQQ 4-bit (entries of config.yaml) on
test-clean and test-other through the package's own steps (no Snakemake), one table row per
entry × split. Meant to finish in a few minutes on one H100:

    python scripts/gpu_check.py --model DIR --mini DIR [--entries fp32,fp16,...] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

from whisper_ptq.checkpoint import save_checkpoint  # noqa: E402
from whisper_ptq.config import load_study  # noqa: E402
from whisper_ptq.data import extract_split  # noqa: E402
from whisper_ptq.features import compute_features  # noqa: E402
from whisper_ptq.io import read_jsonl  # noqa: E402
from whisper_ptq.scoring import score_rows  # noqa: E402
from whisper_ptq.transcribe import transcribe_checkpoint  # noqa: E402

DEFAULT = "fp32,fp16,quanto-int8,bnb-nf4,hqq-int4-g64"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--mini", required=True, type=Path, help="folder with test-*.tar.gz")
    p.add_argument("--entries", default=DEFAULT)
    p.add_argument("--splits", default="test-clean,test-other")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("/tmp/gpu_check"))
    a = p.parse_args(argv)
    study = load_study(REPO / "config.yaml", {"model": str(a.model), "devices": a.device})
    names = [n.strip() for n in a.entries.split(",") if n.strip()]
    decoding = {**study.decoding, "batch_size": a.batch_size}
    a.out.mkdir(parents=True, exist_ok=True)
    feats = {}
    for split in a.splits.split(","):
        t0 = time.perf_counter()
        d = extract_split(a.mini / f"{split}.tar.gz", split, a.out / "LibriSpeech" / split)
        compute_features(d, a.model, a.out / f"{split}.st", a.out / f"{split}.jsonl", split)
        feats[split] = (a.out / f"{split}.st", a.out / f"{split}.jsonl")
        print(f"features {split}: {time.perf_counter() - t0:.1f} s", flush=True)
    print("| entry | split | WER | CER | RTF | enc s | dec s | tok/s | peak alloc MB | "
          "peak reserved MB | quantize s | MB on disk |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        entry = study.entries[name]
        reason = study.unsupported_reason(name, a.device)
        if reason:
            print(f"| {name} | – | unsupported: {reason} |")
            continue
        ckpt = a.out / "ckpt" / name
        try:
            meta = save_checkpoint(name, entry, a.model, ckpt)
            for split, (f, m) in feats.items():
                hyp, tim = a.out / f"{name}.{split}.hyp.jsonl", a.out / f"{name}.{split}.timing.json"
                t = transcribe_checkpoint(ckpt, a.model, f, m, a.device, decoding, hyp, tim,
                                          split=split, threads=8)
                s = score_rows(read_jsonl(hyp))
                print(f"| {name} | {split} | {s['wer']:.2f} | {s['cer']:.2f} | {t['rtf']:.4f} | "
                      f"{t['encoder_seconds']:.2f} | {t['decoder_seconds']:.2f} | "
                      f"{t['tokens_per_second'] or 0:.0f} | {t['cuda_peak_allocated_mb'] or 0:.0f} | "
                      f"{t['cuda_peak_reserved_mb'] or 0:.0f} | {meta['quantize_seconds']:.1f} | "
                      f"{meta['bytes_on_disk'] / 2**20:.0f} |", flush=True)
        except Exception as e:  # report every entry, even when one breaks
            print(f"| {name} | – | FAILED: {type(e).__name__}: {str(e)[:300]} |", flush=True)


if __name__ == "__main__":
    main()
