"""Several runs of the GPU check on one GPU model, as one table (docs/results/gpu/<gpu>/).

A lent machine's 15 minutes rarely hold every entry in one run; later runs, in the same session
or a later one (plans, `--entries ...`), measure what the first skipped. This writes their rows
as one results.md / results.json: rows in config.yaml's order, an entry skipped by one run but
measured by another no longer listed as not measured, one line per run, and ΔWER against fp32
from the runs' kept hypotheses (fp32 and the entry may come from different runs). A row
measured again by a later run replaces the earlier one (the run's line says how many it lost).
Runs on another GPU, driver, torch or package versions, of other weights, or with other table
settings, are refused, not mixed; runs of different kits or commits are not (each run's line
names its commit and kit).

    python scripts/gpu_kit/merge.py --out docs/results/gpu/h200 docs/results/gpu/h200/runs/*
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check  # noqa: E402

# what a row depends on besides the code. Not the kit id: a new prepare gives a new one
# whenever a wheel or the packing changes, although nothing measured does
SAME_MACHINE = ("device", "gpu", "driver", "torch", "packages")
SAME_WHERE_RECORDED = ("model_sha256",)  # runs from before the kit recorded it lack it
# the arguments a table's header states once: its rows must share them
SAME_TABLE = {"real": ("batch_size", "limit"), "synthetic": ("tokens", "step_cap_s", "max_batch")}


def table_settings(args: dict, kind: str) -> dict:
    out = {key: args[key] for key in SAME_TABLE[kind]}
    if kind == "real":  # the real model's name heads its table
        out["model"] = Path(args["model"]).name
    return out


def merge(runs: list[dict], order: list[str], names: list[str] | None = None) -> dict:
    names = names or [f"run {i + 1}" for i in range(len(runs))]
    first = runs[0]["device"]
    for key in SAME_MACHINE + SAME_WHERE_RECORDED:
        told = [(n, r["device"].get(key)) for n, r in zip(names, runs)
                if key in SAME_MACHINE or r["device"].get(key)]
        for name, value in told[1:]:
            if value != told[0][1]:
                raise SystemExit(f"merge: {name} has {key} {value!r}, "
                                 f"{told[0][0]} {told[0][1]!r}")
    for kind in SAME_TABLE:
        with_rows = [(n, table_settings(r["device"]["args"], kind))
                     for n, r in zip(names, runs) if r[kind]]
        for n, settings in with_rows[1:]:
            for key, value in settings.items():
                if value != with_rows[0][1][key]:
                    raise SystemExit(f"merge: {n}'s {kind} rows have {key} {value!r}, "
                                     f"{with_rows[0][0]}'s {with_rows[0][1][key]!r}")
    rank = {e: i for i, e in enumerate(order)}
    out = {"device": first, "runs": [], "real": [], "not_run": [], "agreement": None,
           "synthetic": [], "elapsed_s": 0.0}
    rows: dict[tuple, tuple[int, dict]] = {}  # key -> (run index, row): a later run's wins
    for i, run in enumerate(runs):
        out["runs"].append({"device": run["device"], "elapsed_s": run["elapsed_s"],
                            "replaced": 0})
        out["elapsed_s"] += run["elapsed_s"]
        out["agreement"] = run["agreement"] or out["agreement"]
        for kind in ("real", "synthetic"):
            for row in run[kind]:
                key = (kind, row["model"], row["entry"], row.get("split"))
                if key in rows:
                    out["runs"][rows[key][0]]["replaced"] += 1
                rows[key] = (i, row)
    for (kind, *_), (_, row) in rows.items():
        out[kind].append(row)
    measured = {(r["model"], r["entry"]) for kind in ("real", "synthetic") for r in out[kind]}
    last = {}  # a later run's word on an entry replaces an earlier one's
    for run in runs:
        for row in run["not_run"]:
            if (row["model"], row["entry"]) not in measured:
                last[(row["model"], row["entry"])] = row
    out["not_run"] = list(last.values())
    models = []  # the runs' model order: real model, then the shapes
    for kind in ("real", "not_run", "synthetic"):
        models += [r["model"] for r in out[kind] if r["model"] not in models]
    for kind in ("real", "not_run", "synthetic"):
        out[kind].sort(key=lambda r: (models.index(r["model"]), rank.get(r["entry"], len(rank)),
                                      check.SPLITS.index(r["split"]) if "split" in r else 0))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("runs", nargs="+", type=Path, help="folders with a results.json each")
    a = p.parse_args(argv)
    missing = [str(r) for r in a.runs if not (r / "results.json").is_file()]
    if missing:
        raise SystemExit(f"merge: no results.json in {', '.join(missing)}")
    runs = [json.loads((r / "results.json").read_text()) for r in a.runs]
    order = check.load_study(check.REPO / "config.yaml").entry_order()
    merged = merge(runs, order, [str(r) for r in a.runs])
    a.out.mkdir(parents=True, exist_ok=True)
    hyps = a.out / check.HYPS
    for run in a.runs:  # in the runs' order: a later run's hypotheses replace, as its rows do
        for f in sorted((run / check.HYPS).glob("*.jsonl")):
            hyps.mkdir(parents=True, exist_ok=True)
            if f.resolve() != (hyps / f.name).resolve():
                shutil.copyfile(f, hyps / f.name)
    scores = {}  # each kept file scored once; fp32 may come from another run than the entry

    def score(entry: str, split: str) -> dict | None:
        if (entry, split) not in scores:
            f = hyps / f"{entry}.{split}.jsonl"
            scores[(entry, split)] = (check.score_rows(check.read_jsonl(f)) if f.is_file()
                                      else None)
        return scores[(entry, split)]

    for r in merged["real"]:
        e, split = r["entry"], r["split"]
        if e != "fp32" and score("fp32", split) and score(e, split):
            r.update(check.delta_vs_fp32(score("fp32", split), score(e, split), f"{e} {split}"))
    res = check.Results(a.out, merged["device"])
    res.data = merged
    res.write()
    print(f"merge: {len(runs)} runs, {len(merged['real'])} real rows, "
          f"{len(merged['synthetic'])} random-weight rows, {len(merged['not_run'])} not measured"
          f" -> {a.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
