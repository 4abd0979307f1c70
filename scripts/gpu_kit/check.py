"""The GPU check, through the package's own steps (no Snakemake): docs/gpu.md.

1. real Whisper (tiny.en) on both mini LibriSpeech splits, for every entry of config.yaml
   that can run on the device: WER, CER, RTF, encoder/decoder seconds, tokens/s, peak CUDA
   memory, quantize seconds, size on disk (static-activation entries calibrate on the 16
   test-clean utterances examples/offline-mini.yaml names; those are scored by no entry);
2. fp32 on CPU against fp32 on the device: the same hypotheses, or the differing ids;
3. random-weight whisper-small- and whisper-large-v3-shaped models built here from a
   WhisperConfig, the same entries: RTF, tokens/s and peak memory at batch 16 and at the
   largest batch that fits (powers of 2 upward, with a time cap), quantize seconds; each
   batch size timed again after its first pass, which is kept beside it (new shapes cost
   once: diagnose.py, which also profiles entries and restricts attention backends). The
   decoder is held to exactly --tokens new tokens (min_new_tokens = max_new_tokens, timestamp
   tokens suppressed), so random weights decode as long as real speech would; each utterance
   is 30 s of features.

A time budget (--budget-s) is kept: work that would not fit is listed as skipped, and
results.md / results.json in --out are rewritten after every row, so a run cut short still
leaves its tables. One failing entry never stops the others.

    python3 scripts/gpu_kit/check.py --model DIR --mini DIR --out DIR [--quick] [--device cpu]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
# progress bars would flood the device reply's 12 kB output tail; tqdm reads TQDM_* when it
# is imported, so this goes before the package (and transformers) are
os.environ.setdefault("TQDM_DISABLE", "1")

from whisper_ptq.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from whisper_ptq.config import Study, as_list, load_study  # noqa: E402
from whisper_ptq.data import extract_split  # noqa: E402
from whisper_ptq.features import (calibration_batches, calibration_ids, compute_features,  # noqa: E402
                                  load_manifest)
from whisper_ptq.io import read_jsonl  # noqa: E402
from whisper_ptq.report.tables import delta_text  # noqa: E402
from whisper_ptq.scoring import score_rows  # noqa: E402
from whisper_ptq.decode import make_transcriber  # noqa: E402
from whisper_ptq.transcribe import transcribe_checkpoint  # noqa: E402
import diagnose  # noqa: E402  (--sdpa, --profile-entries)
import kit  # noqa: E402  (quanto's prebuilt kernels)

SPLITS = ("test-clean", "test-other")
# architecture of the real checkpoints (config.json on the hub); weights are random here
SHAPES = {
    "whisper-small": dict(d_model=768, encoder_layers=12, decoder_layers=12,
                          encoder_attention_heads=12, decoder_attention_heads=12,
                          encoder_ffn_dim=3072, decoder_ffn_dim=3072, num_mel_bins=80,
                          vocab_size=51865),
    "whisper-large-v3": dict(d_model=1280, encoder_layers=32, decoder_layers=32,
                             encoder_attention_heads=20, decoder_attention_heads=20,
                             encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128,
                             vocab_size=51866),
    "test": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
                 num_mel_bins=80, vocab_size=51864),  # the CPU tests' shape
}
QUICK_ENTRIES = "fp32,fp16,quanto-int8,hqq-int4-g64,bnb-nf4"
DEFAULT_SHAPES = "whisper-small,whisper-large-v3"
# `--entries runtimes`: fp32 and every entry of these libraries (they come last in
# config.yaml, so a full run's budget may skip them)
RUNTIMES = ("ct2", "torchao", "whispercpp", "ort", "openvino")
# order in which the large model takes entries while its time lasts
PRIORITY = ["fp32", "fp16", "bf16", "quanto-int8", "bnb-nf4", "bnb-int8", "hqq-int4-g64",
            "quanto-int4", "hqq-int8-g64", "bnb-fp4", "quanto-fp8"]
# one per library and precision: the others get batch 16 only, to leave time for more entries
MAX_BATCH_ENTRIES = ["fp32", "fp16", "bf16", "quanto-int8", "hqq-int4-g64", "bnb-nf4", "bnb-int8"]
# share of the budget each phase may use up to (from the start of the run)
PHASE_END = {"real": 0.35, "agreement": 0.45, "whisper-small": 0.65, "whisper-large-v3": 1.0,
             "test": 1.0}
MB = 2**20
DWER = ("dwer", "dwer_lo", "dwer_hi", "dwer_significant")  # report.tables.delta_text's order
HYPS = "hyps"  # in --out: each real row's hypotheses (id, speaker, reference, hypothesis)


class Budget:
    """The time left, overall or to a phase: PHASE_END's shares, scaled so that the last phase
    this run has ends with the budget (a run without the random-weight shapes gives the real
    model all of it)."""

    def __init__(self, seconds: float, phases=tuple(PHASE_END)):
        self.t0, self.total = time.monotonic(), seconds
        self.scale = 1.0 / max((PHASE_END[p] for p in phases), default=1.0)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self, phase: str | None = None) -> float:
        share = min(1.0, PHASE_END[phase] * self.scale) if phase else 1.0
        return self.total * share - self.elapsed()


class Results:
    """Everything measured so far; results.md and results.json rewritten after each row."""

    def __init__(self, out: Path, header: dict):
        self.out = out
        self.data = {"device": header, "real": [], "not_run": [], "agreement": None,
                     "synthetic": [], "elapsed_s": 0.0}

    def add(self, kind: str, row: dict, budget: Budget | None = None):
        self.data[kind].append(row)
        self.write(budget)

    def write(self, budget: Budget | None = None):
        if budget is not None:
            self.data["elapsed_s"] = round(budget.elapsed(), 1)
        for name, text in (("results.json", json.dumps(self.data, indent=1, default=str)),
                           ("results.md", markdown(self.data))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)


def _v(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def device_header(device: str, args, prebuilt: list[str] = ()) -> dict:
    import torch

    h = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
         "python": platform.python_version(), "host": platform.node(),
         # the lent machines run under Firecracker (6.x) or gVisor (4.4.0), which may time
         # launches differently
         "kernel": platform.release(),
         "cpu_count": os.cpu_count(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
         "commit": os.environ.get("WHISPER_PTQ_KIT_COMMIT"),
         "kit": os.environ.get("WHISPER_PTQ_KIT_ID"),
         "model_sha256": os.environ.get("WHISPER_PTQ_MODEL_SHA256"),
         "prebuilt": list(prebuilt),  # quanto kernels loaded, not built (kit.load_prebuilt)
         "sdpa": diagnose.sdpa_state(),
         "packages": {p: _v(p) for p in ("transformers", "accelerate", "safetensors", "numpy",
                                          "optimum-quanto", "hqq", "bitsandbytes", "jiwer",
                                          "whisper-normalizer", "soundfile", "ctranslate2",
                                          "torchao")},
         "args": header_args(args)}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        h.update(gpu=p.name, gpu_memory_mib=p.total_memory // MB,
                 cudnn=torch.backends.cudnn.version())
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=20)
            h["driver"] = r.stdout.strip().splitlines()[0] if r.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            h["driver"] = None
    return h


def header_args(args) -> dict:
    """The run's arguments as results.json keeps them: paths and name lists as written."""
    def text(v):
        return str(v) if isinstance(v, Path) else ",".join(v) if isinstance(v, list) else v

    return {k: text(v) for k, v in vars(args).items()}


def device_line(h: dict) -> str:
    if h["device"] == "cuda":
        gpu = f"{h['gpu']} ({h['gpu_memory_mib']} MiB), driver {h.get('driver')}"
    else:
        gpu = "no GPU: CPU dry run"
    kernel = f"; kernel {h['kernel']}" if h.get("kernel") else ""
    return (f"{gpu}; torch {h['torch']} (CUDA {h['cuda']}); transformers "
            f"{h['packages']['transformers']}; python {h['python']}; {h['cpu_count']} CPUs"
            + kernel)


def _f(x, fmt="{:.2f}"):
    return "–" if x is None else fmt.format(x)


def run_scope(a: dict) -> str:
    """What a run was asked for, where it was less than everything."""
    parts = ["--quick"] if a.get("quick") else []
    parts += [f"--{k.replace('_', '-')} {a[k]}" for k in ("entries", "skip_entries",
                                                          "real_entries", "shapes", "sdpa",
                                                          "profile_entries")
              if a.get(k) not in (None, DEFAULT_SHAPES)]
    parts += [f"--{k.replace('_', '-')}" for k in ("no_real", "no_agreement") if a.get(k)]
    return f" ({' '.join(parts)})" if parts else ""


def markdown(d: dict) -> str:
    h = d["device"]
    pk = ", ".join(f"{k} {v}" for k, v in h["packages"].items() if v)
    lines = [f"# GPU check: {device_line(h)}", ""]
    for run in d.get("runs") or [{"device": h, "elapsed_s": d["elapsed_s"]}]:  # merge.py: several
        r = run["device"]
        lines.append(f"- run {r['date_utc']} UTC on {r['host']}, commit {r.get('commit') or '?'}, "
                     f"kit {r.get('kit') or '?'}"
                     + (", quanto kernels prebuilt" if r.get("prebuilt") else "")
                     + f", {run['elapsed_s']:.0f} s of a "
                     f"{r['args']['budget_s']:.0f} s budget{run_scope(r['args'])}"
                     + (f"; {run['replaced']} rows replaced by a later run"
                        if run.get("replaced") else ""))
    lines += [f"- packages: {pk}", ""]
    if d["real"]:
        a = h["args"]
        lines += [f"## Real {Path(a['model']).name} on the mini LibriSpeech splits "
                  f"(batch {a['batch_size']}, greedy)", "",
                  "Static-activation entries calibrate on 16 test-clean utterances, which no "
                  "entry scores. ΔWER: against fp32 on the same utterances, paired speaker "
                  "bootstrap, † where its 95 % interval excludes 0. Peak memory: CUDA allocated "
                  "/ reserved during transcription.", "",
                  "| entry | split | n | WER % | ΔWER [95 % CI] | CER % | RTF | enc s | dec s | tok/s "
                  "| peak alloc MB | peak reserved MB | quantize s | MB on disk |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in d["real"]:
            lines.append(
                f"| {r['entry']} | {r['split']} | {r['utterances']} | {_f(r['wer'])} | "
                f"{delta_text(*(r.get(k) for k in DWER))} | "
                f"{_f(r['cer'])} | {_f(r['rtf'], '{:.4f}')} | {_f(r['encoder_s'])} | "
                f"{_f(r['decoder_s'])} | {_f(r['tokens_per_s'], '{:.0f}')} | "
                f"{_f(r['peak_alloc_mb'], '{:.0f}')} | {_f(r['peak_reserved_mb'], '{:.0f}')} | "
                f"{_f(r['quantize_s'], '{:.1f}')} | {_f(r['mb_on_disk'], '{:.1f}')} |")
        lines.append("")
    if d["not_run"]:
        lines += ["## Not measured", "", "| model | entry | status | reason |", "|---|---|---|---|"]
        for r in d["not_run"]:
            reason = str(r["reason"]).replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['model']} | {r['entry']} | {r['status']} | {reason} |")
        lines.append("")
    ag = d["agreement"]
    if ag:
        lines += ["## fp32: CPU against the GPU", ""]
        for s in ag["splits"]:
            lines.append(f"- {s['split']}: {s['same']} of {s['utterances']} hypotheses identical; "
                         f"WER CPU {_f(s['wer_cpu'])} / GPU {_f(s['wer_gpu'])}"
                         + (f"; differing ids: {', '.join(x['id'] for x in s['differ'])}"
                            if s["differ"] else ""))
        lines.append("")
    if d["synthetic"]:
        lines += ["## Random-weight models: speed and memory", "",
                  f"Weights random (WhisperConfig of the real model), 30 s of features per "
                  f"utterance, exactly {h['args']['tokens']} new tokens per utterance; RTF = "
                  "seconds / (batch x 30 s), of a repeated pass; s (first): that pass's "
                  "seconds, and in brackets the first pass of that batch size (new shapes: "
                  "once per run, not per batch). Max batch: powers of 2 upward until out of "
                  f"memory, a step over {h['args']['step_cap_s']:.0f} s, batch "
                  f"{h['args']['max_batch']} or the time budget.", "",
                  "| model | entry | quantize s | load s | b | s (first) | RTF | tok/s | peak MB "
                  "| max b | s (first) | RTF | tok/s | peak MB | stopped by |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

        def seconds(m: dict) -> str:  # older runs timed each batch size's first pass only
            if not m:
                return "–"
            return (f"{_f(m['seconds'])} ({_f(m['first_s'])})" if "first_s" in m
                    else f"– ({_f(m['seconds'])})")

        for r in d["synthetic"]:
            b, m = r["base"], r.get("max") or {}
            lines.append(
                f"| {r['model']} | {r['entry']} | {_f(r['quantize_s'], '{:.1f}')} | "
                f"{_f(r['load_s'], '{:.1f}')} | {b['batch']} | {seconds(b)} | "
                f"{_f(b['rtf'], '{:.5f}')} | "
                f"{_f(b['tokens_per_s'], '{:.0f}')} | {_f(b['peak_mb'], '{:.0f}')} | "
                f"{m.get('batch', '–')} | {seconds(m)} | {_f(m.get('rtf'), '{:.5f}')} | "
                f"{_f(m.get('tokens_per_s'), '{:.0f}')} | {_f(m.get('peak_mb'), '{:.0f}')} | "
                f"{r['stopped_by']} |")
        tokens = h["args"]["tokens"]
        loose = [f"{r['model']} {r['entry']}" for r in d["synthetic"]
                 if r["base"]["tokens"] != r["base"]["batch"] * tokens]
        once = [f"{r['model']} {r['entry']}" for r in d["synthetic"] if "first_s" not in r["base"]]
        if once:
            lines += ["", "Timed by one pass per batch size, a first one (runs of the kit before "
                      f"it repeated them; their RTF and tok/s are of that pass): {', '.join(once)}."]
        if loose:
            lines += ["", f"Not {tokens} new tokens per utterance (CTranslate2's generate has no "
                      f"minimum length; tok/s counts what was decoded): {', '.join(loose)}."]
        lines.append("")
        profiled = [r for r in d["synthetic"] if r.get("profile")]
        if profiled:
            lines += ["### Where the time goes (torch profiler)", ""]
            lines += diagnose.markdown(profiled)
    return "\n".join(lines)


def load(args) -> Study:
    """config.yaml + examples/offline-mini.yaml (calibrate on test-clean) for this model."""
    import yaml

    overlay = yaml.safe_load((REPO / "examples" / "offline-mini.yaml").read_text()) or {}
    overrides = {**overlay, "model": str(args.model), "devices": args.device}
    return load_study(REPO / "config.yaml", overrides)  # without Snakemake: schema defaults


def entry_names(study: Study, args) -> list[str]:
    """The entries a run measures, in config order; its other choices checked against them."""
    order = study.entry_order() if hasattr(study, "entry_order") else list(study.entries)

    def listed(names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in study.entries]
        if unknown:
            raise SystemExit(f"check: unknown entries {unknown}; known: {list(study.entries)}")
        return names

    skip = listed(args.skip_entries or [])
    listed(args.max_batch_entries or [])
    wanted = args.entries or (QUICK_ENTRIES if args.quick else None)
    if wanted == "runtimes":
        order = [n for n in order if n == "fp32" or study.entries[n]["library"] in RUNTIMES]
    elif wanted:
        names = listed(as_list(wanted))
        order = [n for n in order if n in names]
    names = [n for n in order if n not in skip]
    # the run's other choices, checked against its entries
    for option in ("real_entries", "profile_entries"):
        stray = [n for n in getattr(args, option) or [] if n not in names]
        if stray:
            raise SystemExit(f"check: --{option.replace('_', '-')} {stray} are not among "
                             "this run's entries")
    if args.sdpa is not None and not args.no_real:
        # real rows carry no backend in their key: they would pass for the default's
        raise SystemExit("check: --sdpa is for the random-weight shapes: add --no-real")
    return names


def delta_vs_fp32(fp32: dict | None, score: dict, what: str) -> dict:
    """ΔWER / ΔCER of ``score`` against fp32's score of the same split (``score_rows``), with
    the pipeline's paired speaker bootstrap (95 %); empty without an fp32 score."""
    from whisper_ptq.stats import paired_delta

    if fp32 is None:
        return {}
    out = {}
    for key, unit in (("dwer", "words"), ("dcer", "chars")):
        ci = paired_delta(fp32, score, unit, what=what)
        out.update(ci.as_dict(key), **{f"{key}_significant": ci.excludes_zero})
    return out


def short_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"


def free_memory():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------
# 1. real model


def prepare_features(args) -> dict:
    feats = {}
    for split in SPLITS:
        t0 = time.perf_counter()
        d = args.work / "LibriSpeech" / split
        if not d.is_dir():
            extract_split(args.mini / f"{split}.tar.gz", split, d)
        f, m = args.work / f"{split}.st", args.work / f"{split}.jsonl"
        if not (f.is_file() and m.is_file()):
            compute_features(d, args.model, f, m, split)
        feats[split] = (f, m)
        print(f"features {split}: {time.perf_counter() - t0:.1f} s", flush=True)
    return feats


def run_real(study, names, feats, args, budget, res) -> dict:
    """Every entry on both splits; returns {entry: {split: hypothesis path}}."""
    model_name = Path(args.model).name
    cal = study.calibration
    decoding = {**study.decoding, "batch_size": args.batch_size}
    hyps, fp32_scores = {}, {}  # fp32's scores: each later row's ΔWER
    for name in names:
        reason = study.unsupported_reason(name, args.device)
        if reason:
            res.add("not_run", {"model": model_name, "entry": name, "status": "unsupported",
                                "reason": reason}, budget)
            continue
        if budget.left("real") <= 0:
            res.add("not_run", {"model": model_name, "entry": name, "status": "skipped",
                                "reason": "time budget"}, budget)
            continue
        ckpt = args.work / "ckpt" / model_name / name
        try:
            calibration, source = None, None
            if study.needs_calibration(name):
                f, m = feats[cal["split"]]
                ids, calibration = calibration_batches(f, m, cal["n"], split=cal["split"])
                source = {"split": cal["split"], "n": cal["n"], "ids": ids}
            if ckpt.exists():
                shutil.rmtree(ckpt)
            meta = save_checkpoint(name, study.entries[name], args.model, ckpt,
                                   calibration=calibration, calibration_source=source)
            for split in SPLITS:
                f, m = feats[split]
                exclude = (calibration_ids(load_manifest(m), cal["n"], split)
                           if study.calibration_excluded(split) else ())
                hyp = args.work / f"{model_name}.{name}.{args.device}.{split}.hyp.jsonl"
                tim = hyp.with_suffix("").with_suffix(".timing.json")
                t = transcribe_checkpoint(ckpt, args.model, f, m, args.device, decoding, hyp, tim,
                                          limit=args.limit, exclude=exclude, split=split,
                                          threads=args.threads)
                s = score_rows(read_jsonl(hyp))
                hyps.setdefault(name, {})[split] = hyp
                if name == "fp32":
                    fp32_scores[split] = s
                kept = args.out / HYPS / f"{name}.{split}.jsonl"  # for ΔWER here and in merge.py
                kept.parent.mkdir(exist_ok=True)
                shutil.copyfile(hyp, kept)
                res.add("real", {
                    "model": model_name, "entry": name, "split": split,
                    "utterances": t.utterances, "wer": s["wer"], "cer": s["cer"],
                    "rtf": t.rtf, "encoder_s": t.encoder_seconds,
                    "decoder_s": t.decoder_seconds, "tokens_per_s": t.tokens_per_second,
                    "peak_alloc_mb": t.cuda_peak_allocated_mb,
                    "peak_reserved_mb": t.cuda_peak_reserved_mb,
                    "peak_rss_mb": t.peak_rss_mb, "quantize_s": meta.quantize_seconds,
                    "mb_on_disk": meta.bytes_on_disk / MB, "facts": meta.facts,
                    "notes": meta.notes,
                    **delta_vs_fp32(None if name == "fp32" else fp32_scores.get(split), s,
                                    f"{name} {split}")}, budget)
                print(f"{name} {split}: WER {s['wer']:.2f} RTF {t.rtf:.4f} "
                      f"({budget.elapsed():.0f} s)", flush=True)
        except Exception as e:  # every entry is reported, even when one breaks
            traceback.print_exc()
            res.add("not_run", {"model": model_name, "entry": name, "status": "failed",
                                "reason": short_error(e)}, budget)
        finally:
            if name != "fp32" and ckpt.exists():
                shutil.rmtree(ckpt)
            free_memory()
        if name == "fp32" and not args.no_agreement:  # on a CPU dry run: CPU against CPU
            agreement(study, feats, args, budget, res, hyps.get("fp32", {}))
    return hyps


# ---------------------------------------------------------------------------------------
# 2. CPU against the device


def agreement(study, feats, args, budget, res, gpu_hyps: dict) -> None:
    model_name = Path(args.model).name
    ckpt = args.work / "ckpt" / model_name / "fp32"
    if not gpu_hyps or not ckpt.exists():
        return
    out = {"entry": "fp32", "splits": []}
    cal = study.calibration
    try:
        for split in SPLITS:
            if budget.left("agreement") <= 0:
                res.add("not_run", {"model": model_name, "entry": "fp32 CPU", "status": "skipped",
                                    "reason": f"time budget ({split} agreement)"}, budget)
                continue
            f, m = feats[split]
            exclude = (calibration_ids(load_manifest(m), cal["n"], split)
                       if study.calibration_excluded(split) else ())
            hyp = args.work / f"{model_name}.fp32.cpu.{split}.hyp.jsonl"
            transcribe_checkpoint(ckpt, args.model, f, m, "cpu", study.decoding, hyp,
                                  hyp.with_suffix("").with_suffix(".timing.json"),
                                  limit=args.limit, exclude=exclude, split=split,
                                  threads=args.cpu_threads)
            cpu = {r["id"]: r for r in read_jsonl(hyp)}
            gpu = {r["id"]: r for r in read_jsonl(gpu_hyps[split])}
            differ = [{"id": i, "cpu": cpu[i]["hypothesis"], "gpu": gpu[i]["hypothesis"]}
                      for i in sorted(cpu) if i in gpu and cpu[i]["hypothesis"] != gpu[i]["hypothesis"]]
            out["splits"].append({
                "split": split, "utterances": len(cpu), "same": len(cpu) - len(differ),
                "missing": sorted(set(cpu) ^ set(gpu)), "differ": differ,
                "wer_cpu": score_rows(list(cpu.values()))["wer"],
                "wer_gpu": score_rows(list(gpu.values()))["wer"]})
            print(f"agreement {split}: {len(cpu) - len(differ)}/{len(cpu)} identical", flush=True)
    except Exception as e:
        traceback.print_exc()
        res.add("not_run", {"model": model_name, "entry": "fp32 CPU", "status": "failed",
                            "reason": short_error(e)}, budget)
    res.data["agreement"] = out
    res.write(budget)


# ---------------------------------------------------------------------------------------
# 3. random-weight models of the real sizes


def build_random_model(shape: str, tokenizer_dir: Path, dest: Path, tokens: int, device: str):
    """A WhisperForConditionalGeneration of ``shape`` with random weights, saved to ``dest``
    with the real checkpoint's generation config, held to exactly ``tokens`` new tokens."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    real = WhisperConfig.from_pretrained(tokenizer_dir)
    config = WhisperConfig(**SHAPES[shape], max_source_positions=1500, max_target_positions=448,
                           pad_token_id=real.pad_token_id, bos_token_id=real.bos_token_id,
                           eos_token_id=real.eos_token_id,
                           decoder_start_token_id=real.decoder_start_token_id)
    torch.manual_seed(0)
    with torch.device(device):  # initialising 1.5 B parameters is far quicker on the GPU
        model = WhisperForConditionalGeneration(config)
        with torch.no_grad():  # random init zeroes the pad row; quanto float8 scales hate zeros
            model.model.decoder.embed_tokens.weight[config.pad_token_id].normal_(0, 0.02)
    gen = GenerationConfig.from_pretrained(tokenizer_dir)
    gen.min_new_tokens = gen.max_new_tokens = tokens
    # random weights emit timestamp tokens, which a real model after <|notimestamps|> does
    # not: two in a row make Whisper's generate seek into the 30 s window and decode it again
    # (whisper-small's shape, 16 tokens asked: 5 passes, 80 tokens). Suppressed, so one pass
    # decodes exactly `tokens`, as speech would
    first_timestamp = gen.no_timestamps_token_id + 1
    gen.suppress_tokens = sorted(set(gen.suppress_tokens or ())
                                 | set(range(first_timestamp, config.vocab_size)))
    model.generation_config = gen
    model.save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json",
                 "preprocessor_config.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, dest / name)
    n = sum(p.numel() for p in model.parameters())
    del model
    free_memory()
    return n


def measure(tr, batch: int, mels: int, device: str) -> dict:
    """One timed batch of random 30 s features through the package's transcriber."""
    import torch

    g = torch.Generator(device=device).manual_seed(batch)
    feats = torch.randn(batch, mels, 3000, generator=g, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    _, t = tr(feats)
    peak = torch.cuda.max_memory_allocated() / MB if device == "cuda" else None
    del feats
    return {"batch": batch, "seconds": t["total"], "encoder_s": t["encoder"],
            "decoder_s": t["decoder"], "tokens": t["tokens"],
            "tokens_per_s": t["tokens"] / t["decoder"] if t["decoder"] > 0 else None,
            "rtf": t["total"] / (batch * 30.0), "peak_mb": peak}


def is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def run_synthetic(shape: str, study, names, args, budget, res) -> None:
    from transformers import WhisperTokenizer

    label = diagnose.label(shape, args.sdpa)
    profiled = set(args.profile_entries or [])
    reasons = {n: study.unsupported_reason(n, args.device) for n in names}
    if args.no_real:  # else the real model's table lists them, once
        for n, reason in reasons.items():
            if reason:
                res.add("not_run", {"model": label, "entry": n, "status": "unsupported",
                                    "reason": reason}, budget)
    names = [n for n in names if not reasons[n]]
    if shape == "whisper-large-v3":  # slow to quantize on CPU: most telling entries first
        names = sorted(names, key=lambda n: PRIORITY.index(n) if n in PRIORITY else len(PRIORITY))
    scratch = args.scratch / shape
    model_dir = scratch / "model"
    if budget.left(shape) < args.min_phase_s:
        for n in names:
            res.add("not_run", {"model": label, "entry": n, "status": "skipped",
                                "reason": "time budget"}, budget)
        return
    try:
        shutil.rmtree(scratch, ignore_errors=True)
        t0 = time.perf_counter()
        n_params = build_random_model(shape, args.model, model_dir, args.tokens, args.device)
        print(f"{shape}: {n_params / 1e6:.0f} M parameters built and saved in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    except Exception as e:
        traceback.print_exc()
        res.add("not_run", {"model": label, "entry": "(model)", "status": "failed",
                            "reason": short_error(e)}, budget)
        return
    tokenizer = WhisperTokenizer.from_pretrained(model_dir)
    mels = SHAPES[shape]["num_mel_bins"]
    decoding = {**study.decoding, "max_new_tokens": args.tokens}
    # the longest entry so far, apart for those whose largest batch is searched (several
    # times longer): a searched one must not keep the quicker ones from the time left
    slowest = {True: 0.0, False: 0.0}
    for name in names:
        searched = args.max_batch_entries is None or name in args.max_batch_entries
        # an entry of the large model can take a minute before its first measurement
        floor = args.min_entry_s * (4 if shape == "whisper-large-v3" else 1)
        if budget.left(shape) < max(floor, 1.3 * slowest[searched]):
            res.add("not_run", {"model": label, "entry": name, "status": "skipped",
                                "reason": "time budget"}, budget)
            continue
        t_entry = time.perf_counter()
        ckpt = scratch / "ckpt" / name
        model = tr = None
        try:
            calibration, source = None, None
            if study.needs_calibration(name):
                import torch

                g = torch.Generator().manual_seed(1)
                calibration = [torch.randn(4, mels, 3000, generator=g) for _ in range(2)]
                source = {"split": "random features", "n": 8, "ids": []}
            meta = save_checkpoint(name, study.entries[name], model_dir, ckpt,
                                   calibration=calibration, calibration_source=source)
            t1 = time.perf_counter()
            model, _ = load_checkpoint(ckpt, model_dir, args.device)
            load_s = time.perf_counter() - t1
            model.generation_config.min_new_tokens = args.tokens
            tr = make_transcriber(model, tokenizer, args.device, decoding)  # CT2: its own
            # the warm-up is a pass of the timed shape, kept as "first_s": a batch size's
            # first pass also pays what each new shape costs once (kernels, the allocator,
            # cuDNN attention's graph per key length: diagnose.py), which a dataset's
            # transcription pays once, not per batch
            first = measure(tr, args.batch_size, mels, args.device)
            # --base-repeats > 1: the quickest pass, all of them kept
            passes = [measure(tr, args.batch_size, mels, args.device)
                      for _ in range(args.base_repeats)]
            base = {**min(passes, key=lambda m: m["seconds"]), "first_s": first["seconds"],
                    "repeats_s": [m["seconds"] for m in passes]}
            best, stopped = None, f"batch {args.max_batch}"
            b, last = args.batch_size, base
            if not searched:
                stopped = "not searched (--max-batch-entries)"
            while not stopped.startswith("not searched"):
                b *= 2
                if b > args.max_batch:
                    break
                if last["seconds"] * 2.2 > args.step_cap_s:
                    stopped = f"step cap ({last['seconds']:.1f} s at b {last['batch']})"
                    break
                if budget.left(shape) < last["seconds"] * 4.5 + 5:  # the next b, twice
                    stopped = "time budget"
                    break
                try:
                    last = measure(tr, b, mels, args.device)
                    best = last
                except Exception as e:
                    if not is_oom(e):
                        raise
                    stopped = f"out of memory at b {b}"
                    free_memory()
                    break
            if best:  # the search's passes were each a first: the largest batch again
                once = None
                if budget.left(shape) < best["seconds"] + 5:
                    once = "time budget"
                else:
                    try:
                        best = {**measure(tr, best["batch"], mels, args.device),
                                "first_s": best["seconds"]}
                    except Exception as e:
                        if not is_oom(e):
                            raise
                        once = "out of memory"
                        free_memory()
                if once:
                    stopped += f"; b {best['batch']} measured once ({once})"
            profile = None
            if name in profiled:  # a batch size no pass above used: its first pass is new
                try:
                    profile = diagnose.profiled_passes(model, tokenizer, args.device, decoding,
                                                       args.batch_size + 1, mels,
                                                       args.profile_tokens, measure)
                except Exception as e:  # the row stands without it
                    traceback.print_exc()
                    profile = {"error": short_error(e)}
                    free_memory()
            res.add("synthetic", {"model": label, "entry": name, "params": n_params,
                                  "quantize_s": meta.quantize_seconds, "load_s": load_s,
                                  "mb_on_disk": meta.bytes_on_disk / MB, "base": base,
                                  "max": best, "stopped_by": stopped,
                                  **({"profile": profile} if profile else {})}, budget)
            print(f"{shape} {name}: b{base['batch']} RTF {base['rtf']:.5f}, max b "
                  f"{(best or base)['batch']} ({stopped}) ({budget.elapsed():.0f} s)", flush=True)
        except Exception as e:
            traceback.print_exc()
            res.add("not_run", {"model": label, "entry": name, "status": "failed",
                                "reason": short_error(e)}, budget)
        finally:
            del model, tr
            shutil.rmtree(ckpt, ignore_errors=True)
            free_memory()
            slowest[searched] = max(slowest[searched], time.perf_counter() - t_entry)
    shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------------------


def default_scratch(work: Path) -> Path:
    """/dev/shm when it can hold a large-v3 model and one checkpoint (~13 GB): saving and
    loading 6 GB checkpoints from memory, not disk, leaves more of the budget to measuring."""
    shm = Path("/dev/shm")
    try:
        if os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 24 * 2**30:
            return shm / "whisper-ptq-check"
    except OSError:
        pass
    return work / "scratch"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="the real checkpoint (tiny.en)")
    p.add_argument("--mini", required=True, type=Path, help="folder with test-*.tar.gz")
    p.add_argument("--out", required=True, type=Path, help="results.md, results.json")
    p.add_argument("--work", type=Path, default=Path("/tmp/whisper-ptq-check"))
    p.add_argument("--prebuilt", type=Path, default=None,
                   help="folder of quanto kernels built earlier (kit.keep_builds)")
    p.add_argument("--scratch", type=Path, default=None,
                   help="random models and their checkpoints (default: /dev/shm if roomy)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: a dry run of the same code (tests)")
    p.add_argument("--quick", action="store_true",
                   help=f"entries {QUICK_ENTRIES}, no large-v3, budget 240 s")
    p.add_argument("--entries", default=None,
                   help="comma-separated subset of config entries, or 'runtimes' (fp32 + "
                        f"every {'/'.join(RUNTIMES)} entry)")
    p.add_argument("--shapes", default=None,
                   help=f"random-weight shapes (default {DEFAULT_SHAPES}; "
                        "quick: whisper-small); 'none' for none")
    p.add_argument("--skip-entries", default=None, type=as_list,
                   help="comma-separated entries left out (e.g. those that need a kernel build)")
    p.add_argument("--no-real", action="store_true", help="skip the real model")
    p.add_argument("--real-entries", default=None, type=as_list,
                   help="subset of --entries for the real model (default: all of them)")
    p.add_argument("--no-agreement", action="store_true")
    p.add_argument("--limit", type=int, default=None, help="utterances per split (real model)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--max-batch-entries", default=",".join(MAX_BATCH_ENTRIES),
                   type=lambda text: None if text.strip() == "all" else as_list(text),
                   help="entries whose largest batch is searched ('all': every entry)")
    p.add_argument("--tokens", type=int, default=128, help="new tokens per utterance (random)")
    p.add_argument("--base-repeats", type=int, default=1,
                   help="timed passes at --batch-size per random-weight entry (the quickest "
                        "is reported, every one kept in results.json)")
    p.add_argument("--sdpa", default=None, type=diagnose.parse_sdpa,
                   help="only these attention backends (comma list of "
                        f"{','.join(diagnose.SDPA_BACKENDS)}; random-weight shapes only)")
    p.add_argument("--profile-entries", default=None, type=as_list,
                   help="random-weight entries also run twice under torch's profiler")
    p.add_argument("--profile-tokens", type=int, default=16,
                   help="new tokens per utterance of the profiled passes")
    p.add_argument("--step-cap-s", type=float, default=20.0)
    p.add_argument("--budget-s", type=float, default=None, help="default 450 (quick: 240)")
    p.add_argument("--min-phase-s", type=float, default=30.0)
    p.add_argument("--min-entry-s", type=float, default=15.0)
    p.add_argument("--threads", type=int, default=8, help="CPU threads of the device jobs")
    p.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads of the fp32 CPU run (agreement)")
    return p


def main(argv=None) -> int:
    from whisper_ptq import PipelineError

    try:
        return check(parser().parse_args(argv))
    except PipelineError as e:
        print(f"check: error: {e}", file=sys.stderr)
        return 2


def check(args) -> int:
    if args.budget_s is None:
        args.budget_s = 240.0 if args.quick else 450.0
    if args.shapes is None:
        args.shapes = "whisper-small" if args.quick else DEFAULT_SHAPES
    shapes = [] if args.shapes == "none" else as_list(args.shapes)
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"check: unknown shapes {unknown}; known: {list(SHAPES)}")
    if args.scratch is None:
        args.scratch = default_scratch(args.work)
    phases = ((() if args.no_real else ("real",))
              + (() if args.no_real or args.no_agreement else ("agreement",)) + tuple(shapes))
    budget = Budget(args.budget_s, phases)
    import transformers

    transformers.logging.set_verbosity_error()  # min_new_tokens notices on every generate call
    from whisper_ptq.modeling import check_device

    check_device(args.device)  # one clear PipelineError without a GPU
    study = load(args)
    names = entry_names(study, args)
    for d in (args.out, args.work, args.scratch):
        d.mkdir(parents=True, exist_ok=True)
    with diagnose.sdpa_allowed(args.sdpa):
        run(args, study, names, shapes, budget)
    shutil.rmtree(args.scratch, ignore_errors=True)
    print(f"done in {budget.elapsed():.0f} s: {args.out / 'results.md'}", flush=True)
    return 0


def run(args, study: Study, names: list[str], shapes: list[str], budget: Budget) -> None:
    """The phases, each row written as it comes."""
    prebuilt = kit.load_prebuilt(args.prebuilt, args.work)
    res = Results(args.out, device_header(args.device, args, prebuilt))
    print(device_line(res.data["device"]), flush=True)
    res.write(budget)
    if not args.no_real:
        feats = prepare_features(args)
        real = [n for n in names if not args.real_entries or n in args.real_entries]
        run_real(study, real, feats, args, budget, res)
    for shape in shapes:
        run_synthetic(shape, study, names, args, budget, res)
    res.write(budget)


if __name__ == "__main__":
    sys.exit(main())
