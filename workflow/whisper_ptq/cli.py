"""Command line behind the Snakemake rules: ``python -m whisper_ptq.cli <step> ...``.

Every step writes its outputs atomically; a PipelineError is printed as one line
(``error: ...``) and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import PipelineError


def _json(s: str):
    return json.loads(s)


def cmd_download(a):
    from .data import archive_url, download, expected_md5, extract_split

    md5 = expected_md5(a.base_url, a.split, a.md5)
    archive = Path(a.archive)
    download(archive_url(a.base_url, a.split), archive, md5)
    extract_split(archive, a.split, a.out)


def cmd_model(a):
    from .modeling import resolve_model

    resolve_model(a.source, a.out)


def cmd_features(a):
    from .features import compute_features

    n = compute_features(a.split_dir, a.model_dir, a.out_tensors, a.out_manifest, a.split)
    print(f"{a.split}: features for {n} utterances")


def cmd_quantize(a):
    from .checkpoint import save_checkpoint
    from .modeling import set_threads

    set_threads(a.threads)
    calibration, calib = None, None
    if a.calib_features or a.calib_manifest:
        from .features import calibration_batches

        if not (a.calib_features and a.calib_manifest and a.calib_n):
            raise PipelineError("quantize: give --calib-features, --calib-manifest and --calib-n")
        ids, calibration = calibration_batches(a.calib_features, a.calib_manifest, a.calib_n,
                                               split=a.calib_split)
        calib = {"split": a.calib_split, "n": a.calib_n, "ids": ids}
    meta = save_checkpoint(a.entry, a.config, a.model_dir, a.out, calibration=calibration,
                           calibration_source=calib)
    meta.write(a.out_meta)
    print(f"{a.entry}: {meta.bytes_on_disk} bytes on disk")


def cmd_transcribe(a):
    from .transcribe import excluded_ids, transcribe_checkpoint

    # this split calibrates static-activation entries: never score those
    exclude = excluded_ids(a.manifest, a.calib_n, a.split)
    t = transcribe_checkpoint(a.checkpoint, a.model_dir, a.features, a.manifest, a.device,
                              a.decoding, a.out_hyp, a.out_timing, limit=a.limit, exclude=exclude,
                              split=a.split, threads=a.threads, shard=(a.shard, a.shards),
                              shard_size=a.shard_size, **a.timing)
    print(f"{a.split} shard {a.shard + 1}/{a.shards}: {t.utterances} utterances, RTF {t.rtf:.4f}")


def cmd_score(a):
    from .scoring import score_run

    s = score_run(a.hyp, a.timing, a.meta, a.fp32_meta, a.model, out=a.out, out_hyp=a.out_hyp,
                  out_timing=a.out_timing)
    print(f"{s.model} {s.entry} {s.device} {s.split}: WER {s.wer:.2f} CER {s.cer:.2f}")


def cmd_report(a):
    from .io import atomic_path
    from .report import build

    unsupported = json.loads(a.unsupported) if a.unsupported else []
    pareto = dict(p.split("=", 1) for p in a.pareto)  # device=path
    rows = build(a.scores, unsupported, a.csv, a.md, a.tex, a.png, a.pdf, pareto=pareto,
                 noise_png=a.noise_png, n_resamples=a.bootstrap_resamples, seed=a.seed,
                 sweep=json.loads(a.sweep) if a.sweep else None, sweep_md=a.sweep_md,
                 sweep_png=a.sweep_png, order=a.order, main_png=a.main_png, summary=a.summary)
    if a.config_out:  # the run's config, for `snakemake --report ... --configfile <it>`
        import yaml

        with atomic_path(a.config_out) as tmp:
            tmp.write_text(yaml.safe_dump(a.config or {}, sort_keys=False))
    print(f"report: {len(rows)} rows")


def cmd_replot(a):
    from .report import replot

    for path in replot(a.runs, a.out):
        print(path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="whisper_ptq", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("download", help="fetch + md5-check + extract one LibriSpeech split")
    s.add_argument("--base-url", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--md5", default=None)
    s.add_argument("--archive", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("model", help="resolve a model source into a local directory")
    s.add_argument("--source", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_model)

    s = sub.add_parser("features", help="log-mel feature cache of one split")
    for arg in ("--split-dir", "--model-dir", "--split", "--out-tensors", "--out-manifest"):
        s.add_argument(arg, required=True)
    s.set_defaults(func=cmd_features)

    s = sub.add_parser("quantize", help="quantize one entry into a checkpoint directory")
    s.add_argument("--entry", required=True)
    s.add_argument("--config", type=_json, required=True)
    s.add_argument("--model-dir", required=True)
    s.add_argument("--threads", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--out-meta", required=True)
    s.add_argument("--calib-features", default=None,
                   help="feature cache of the calibration split (static-activation entries)")
    s.add_argument("--calib-manifest", default=None)
    s.add_argument("--calib-n", type=int, default=None)
    s.add_argument("--calib-split", default="")
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("transcribe", help="transcribe one split with one checkpoint on one device")
    for arg in ("--checkpoint", "--model-dir", "--features", "--manifest", "--device",
                "--split", "--out-hyp", "--out-timing"):
        s.add_argument(arg, required=True)
    s.add_argument("--decoding", type=_json, required=True)
    s.add_argument("--timing", type=_json, default={})
    s.add_argument("--limit", type=lambda v: None if v in ("", "None", "null") else int(v), default=None)
    s.add_argument("--threads", type=int, required=True)
    s.add_argument("--calib-n", type=int, default=0,
                   help="this split calibrates: exclude its first N calibration utterances")
    s.add_argument("--shard", type=int, default=0, help="which shard (0-based)")
    s.add_argument("--shards", type=int, default=1, help="how many shards the split has")
    s.add_argument("--shard-size", type=int, default=0, help="utterances per shard (0: all)")
    s.set_defaults(func=cmd_transcribe)

    s = sub.add_parser("score", help="gather a run's shards; WER/CER and size reduction")
    s.add_argument("--hyp", nargs="+", required=True, help="every shard's hypotheses, in order")
    s.add_argument("--timing", nargs="+", required=True, help="every shard's timing, in order")
    for arg in ("--meta", "--fp32-meta", "--model", "--out", "--out-hyp", "--out-timing"):
        s.add_argument(arg, required=True)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("report", help="runs.csv, Table 1, summary and figures")
    s.add_argument("--scores", nargs="*", default=[])
    s.add_argument("--unsupported", default="")
    for arg in ("--csv", "--md", "--tex"):
        s.add_argument(arg, required=True)
    s.add_argument("--png", default=None, help="Fig. 1 (test-other − test-clean)")
    s.add_argument("--pdf", default=None)
    s.add_argument("--main-png", default=None, help="ΔWER vs fp32 (PDF beside it)")
    s.add_argument("--summary", default=None, help="compact Table 1 for the terminal")
    s.add_argument("--config", type=_json, default=None, help="JSON of the run's config")
    s.add_argument("--config-out", default=None, help="YAML file to record --config in")
    s.add_argument("--pareto", nargs="*", default=[], help="DEVICE=PNG, one per device")
    s.add_argument("--noise-png", default=None, help="WER vs SNR figure")
    s.add_argument("--bootstrap-resamples", type=int, required=True)
    s.add_argument("--seed", type=int, required=True, help="bootstrap seed")
    s.add_argument("--sweep", default="", help="JSON of Study.sweep (sensitivity sweep)")
    s.add_argument("--sweep-md", default=None)
    s.add_argument("--sweep-png", default=None)
    s.add_argument("--order", type=_json, default=None,
                   help="JSON list of entry names: the tables' row order (default: by name)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("replot", help="redraw the figures of a runs.csv (no score files needed)")
    s.add_argument("runs", help="runs.csv")
    s.add_argument("out", help="output directory")
    s.set_defaults(func=cmd_replot)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
