"""The pipeline's steps: one function per Snakemake rule, and the job's spec it runs from.

A job is its **spec** (one JSON-able dict: everything its result depends on, paths and
``threads`` aside) plus its named **paths**. ``spec(study, rule, wildcards)`` computes the
spec once per job: it is the rule's only non-derived param, so Snakemake's params trigger
re-runs a job exactly when its spec changes. A step ``step(spec, input, output, threads)``
reads the spec and the paths by name (the rule's ``input:`` / ``output:`` names); run one by
hand with ``python -m whisper_ptq.cli <step> --spec ... --<input> PATH --out-<output> PATH``.
Adding an option: its schema key, its line in the rule's ``*_spec`` here, its use in the step.

Module top stays light: Snakemake imports it to plan the jobs; steps import what they use.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from . import PipelineError

# steps that only read local model directories: the CLI sets HF_HUB_OFFLINE=1 for them
OFFLINE = ("features", "quantize", "transcribe")


class Named(dict):
    """A step's spec or paths: a missing key is a PipelineError, ``missing(key)`` its text."""

    def __init__(self, items, step: str, missing):
        super().__init__(items)
        self.step, self.missing = step, missing

    def __missing__(self, key):
        raise PipelineError(f"{self.step}: {self.missing(key)}")


def _flag(key: str) -> str:
    return key.replace("_", "-")


def as_list(paths) -> list[str]:
    """A list-valued path (one file arrives as a plain string)."""
    return [paths] if isinstance(paths, str) else list(paths)


# --- specs (computed while planning; ``study`` is whisper_ptq.config.Study) -----------------

def download_spec(study, split, **_):
    from .data import known_md5

    url = study.config["librispeech_url"]
    # the checksum it will check (config md5, or a file:// mirror's md5sum.txt line): an
    # archive replaced with its md5 updated re-runs the download
    return {"base_url": url, "split": split,
            "md5": known_md5(url, split, study.config["md5"].get(split))}


def model_spec(study, model, **_):
    from .modeling import source_fingerprint

    source = study.models[model]
    # read by no step: a re-run trigger, so a directory re-converted in place is copied again
    return {"source": source, "fingerprint": source_fingerprint(source)}


def features_spec(study, split, **_):
    return {"split": split}


def quantize_spec(study, entry, **_):
    calibration = None
    if study.needs_calibration(entry):  # static activations: the calibration split's cache
        calibration = {"split": study.calibration["split"], "n": study.calibration["n"]}
    return {"entry": entry, "config": study.entries[entry], "calibration": calibration}


def transcribe_spec(study, device, split, shard, nshards, **_):
    return {"device": device, "split": split, "shard": int(shard), "shards": int(nshards),
            "decoding": study.decoding, "timing": study.timing, "limit": study.limit,
            # calibration utterances of this split (the calibration split) are never scored
            "calib_n": study.calibration_excluded(split),
            # one shard covers the whole split whatever shard_size says: no re-run for it
            "shard_size": study.shard_size if int(nshards) > 1 else 0}


def score_spec(study, model, **_):
    return {"model": model}


def report_spec(study, **_):
    return {"unsupported": study.unsupported(), "bootstrap": study.config["bootstrap"],
            "sweep": study.sweep, "order": study.entry_order(),
            # the run's config, recorded beside the report; `threads` changes no result
            # (README, "Re-runs"), so it re-runs nothing here either
            "config": {k: v for k, v in study.config.items() if k != "threads"}}


def spec(study, rule: str, wildcards) -> dict:
    """The spec of ``rule``'s job with these wildcards (a mapping of names to values)."""
    return globals()[f"{rule}_spec"](study, **dict(wildcards.items()))


# --- the command line's paths, and a rule's params ---------------------------------------

def path_args(input: dict, output: dict) -> str:
    """A job's named paths as whisper_ptq.cli options, shell-quoted (``parse_paths`` reads them)."""
    words = []
    for prefix, paths in (("--", input), ("--out-", output)):
        for name, value in paths.items():
            words += [prefix + _flag(name), *as_list(value)]
    return shlex.join(map(str, words))


def parse_paths(words: list[str]) -> tuple[dict, dict]:
    """``--<input> PATH... --out-<output> PATH...`` → (input, output) by name; one path
    is a string, several (or none) a list."""
    input, output, values = {}, {}, None
    for word in words:
        if word.startswith("--"):
            name = word[2:].replace("-", "_")
            paths, name = (output, name[4:]) if name.startswith("out_") else (input, name)
            if not name.isidentifier() or name in paths:
                raise PipelineError(f"{word}: not a path name, or given twice")
            values = paths[name] = []
        elif values is None:
            raise PipelineError(f"{word!r}: a path before any --<name>")
        else:
            values.append(word)
    for paths in (input, output):
        paths.update({k: v[0] for k, v in paths.items() if len(v) == 1})
    return input, output


def rule_params(study, rule: str) -> dict:
    """A rule's params for STEP (common.smk). ``spec``: the job's spec as JSON, a function
    of the wildcards alone, so Snakemake's params trigger compares it. ``args``: the step
    and the job's paths, a function of input and output, which Snakemake counts as derived
    and leaves out of that trigger (the input and mtime triggers cover paths)."""

    def spec_json(wildcards):
        return json.dumps(spec(study, rule, wildcards), sort_keys=True, default=str)

    def args(wildcards, input, output):
        return f"{rule} {path_args(dict(input.items()), dict(output.items()))}"

    return {"spec": spec_json, "args": args}


# --- steps -------------------------------------------------------------------------------

def download(spec, input, output, threads):
    """Fetch one LibriSpeech split archive, check its md5, extract it."""
    from . import data

    md5 = data.expected_md5(spec["base_url"], spec["split"], spec["md5"])
    archive = Path(output["archive"])
    data.download(data.archive_url(spec["base_url"], spec["split"]), archive, md5)
    data.extract_split(archive, spec["split"], output["split_dir"])


def model(spec, input, output, threads):
    from .modeling import resolve_model

    resolve_model(spec["source"], output["model_dir"])


def features(spec, input, output, threads):
    from .features import compute_features

    n = compute_features(input["split_dir"], input["model_dir"], output["tensors"],
                         output["manifest"], spec["split"])
    print(f"{spec['split']}: features for {n} utterances")


def quantize(spec, input, output, threads):
    from .checkpoint import save_checkpoint
    from .modeling import set_threads

    set_threads(threads)
    calibration, source = None, None
    if spec["calibration"]:
        from .features import calibration_batches

        split, n = spec["calibration"]["split"], spec["calibration"]["n"]
        ids, calibration = calibration_batches(input["calib_features"], input["calib_manifest"],
                                               n, split=split)
        source = {"split": split, "n": n, "ids": ids}
    meta = save_checkpoint(spec["entry"], spec["config"], input["model_dir"], output["checkpoint"],
                           calibration=calibration, calibration_source=source)
    meta.write(output["meta"])
    print(f"{spec['entry']}: {meta.bytes_on_disk} bytes on disk")


def transcribe(spec, input, output, threads):
    from .transcribe import excluded_ids, transcribe_checkpoint

    # this split calibrates static-activation entries: never score those
    exclude = excluded_ids(input["manifest"], spec["calib_n"], spec["split"])
    t = transcribe_checkpoint(input["checkpoint"], input["model_dir"], input["features"],
                              input["manifest"], spec["device"], spec["decoding"], output["hyp"],
                              output["timing"], limit=spec["limit"], exclude=exclude,
                              split=spec["split"], threads=threads,
                              shard=(spec["shard"], spec["shards"]),
                              shard_size=spec["shard_size"], timing=spec["timing"])
    print(f"{spec['split']} shard {spec['shard'] + 1}/{spec['shards']}: {t.utterances} "
          f"utterances, RTF {t.rtf:.4f}")


def score(spec, input, output, threads):
    from .scoring import score_run

    s = score_run(as_list(input["hyps"]), as_list(input["timings"]), input["meta"],
                  input["fp32_meta"], spec["model"], out=output["score"], out_hyp=output["hyp"],
                  out_timing=output["timing"])
    print(f"{s.model} {s.entry} {s.device} {s.split}: WER {s.wer:.2f} CER {s.cer:.2f}")


def report(spec, input, output, threads):
    """Every report output the rule names: which figures there are is which paths it gives
    (``dwer``, ``fig1``, ``pareto_<device>``, ``noise``, ``sweep``; each PDF beside its PNG)."""
    import yaml

    from .io import atomic_path
    from .report import build

    pareto = {name.removeprefix("pareto_"): path for name, path in output.items()
              if name.startswith("pareto_") and not name.endswith("_pdf")}
    boot = Named(spec["bootstrap"], "report", lambda k: f"the spec's bootstrap has no {k!r}")
    rows = build(as_list(input["scores"]), spec["unsupported"], output["csv"], output["md"],
                 output["tex"], output.get("fig1"), output.get("fig1_pdf"), pareto=pareto,
                 noise_png=output.get("noise"), n_resamples=boot["resamples"], seed=boot["seed"],
                 sweep=spec["sweep"], sweep_md=output.get("sweep_md"),
                 sweep_png=output.get("sweep"), order=spec["order"],
                 main_png=output["dwer"], summary=output["summary"], cost_md=output["cost"])
    # the run's config, for `snakemake --report ... --configfile <it>`
    with atomic_path(output["config"]) as tmp:
        tmp.write_text(yaml.safe_dump(recorded_config(spec), sort_keys=False))
    print(f"report: {len(rows)} rows")


def recorded_config(spec) -> dict:
    """The report spec's config with its entries in the run's order (``spec["order"]``):
    the spec arrives as sorted JSON (``rule_params``), and a run from the recorded config
    lists Table 1's rows in its entries' order."""
    entries, order = spec["config"].get("entries") or {}, spec["order"]
    rank = {name: i for i, name in enumerate(order)}
    return {**spec["config"],
            "entries": {n: entries[n] for n in sorted(entries, key=lambda n: rank.get(n, len(order)))}}


STEPS = {f.__name__: f for f in (download, model, features, quantize, transcribe, score, report)}


def run(step: str, spec: dict, input: dict, output: dict, threads: int) -> None:
    """Run ``step`` of one job; a missing spec key or path is a PipelineError naming it."""
    if step not in STEPS:
        raise PipelineError(f"unknown step {step!r}; known: {', '.join(STEPS)}")
    STEPS[step](Named(spec, step, lambda k: f"the spec has no {k!r}"),
                Named(input, step, lambda k: f"no --{_flag(k)} path given"),
                Named(output, step, lambda k: f"no --out-{_flag(k)} path given"), threads)
