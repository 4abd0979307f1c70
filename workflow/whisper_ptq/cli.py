"""Command line of the pipeline: each Snakemake rule runs its step through it, and so can you.

``python -m whisper_ptq.cli <step> --spec JSON --threads N --<input> PATH... --out-<output> PATH...``
runs one step of ``whisper_ptq.steps`` (download, model, features, quantize, transcribe,
score, report) from the job's spec (JSON text, or ``@file.json``) and its paths named as the
rule names them (``model_dir`` → ``--model-dir``; an output ``hyp`` → ``--out-hyp``; a list
takes several paths). ``snakemake -n -p`` prints each job's command in this form.
``replot RUNS_CSV OUT_DIR`` redraws the figures of a runs.csv.

Every step writes its outputs atomically; a PipelineError is printed as one line
(``error: ...``) and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import PipelineError, steps


def _spec(text: str) -> dict:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise PipelineError(f"--spec is not JSON: {e}") from None
    if not isinstance(spec, dict):
        raise PipelineError("--spec must be a JSON object")
    return spec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="whisper_ptq", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn in steps.STEPS.items():
        s = sub.add_parser(name, allow_abbrev=False, help=(fn.__doc__ or name).split("\n")[0],
                           epilog="paths: --<input> PATH... --out-<output> PATH... "
                                  "(the rule's input and output names)")
        s.add_argument("--spec", required=True, help="the job's spec: JSON, or @FILE")
        s.add_argument("--threads", type=int, required=True)
    s = sub.add_parser("replot", help="redraw the figures of a runs.csv (no score files needed)")
    s.add_argument("runs", help="runs.csv")
    s.add_argument("out", help="output directory")
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args, rest = parser().parse_known_args(argv)
    try:
        if args.cmd == "replot":
            if rest:
                parser().error(f"unrecognized arguments: {' '.join(rest)}")
            from .report import replot

            for path in replot(args.runs, args.out):
                print(path)
            return 0
        steps.run(args.cmd, _spec(args.spec), *steps.parse_paths(rest), threads=args.threads)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # the steps that read local model directories never reach the hub (set in the job's
    # process only, before anything imports huggingface_hub)
    if sys.argv[1:2] and sys.argv[1] in steps.OFFLINE:
        os.environ["HF_HUB_OFFLINE"] = "1"
    sys.exit(main())
