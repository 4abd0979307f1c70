"""A step run by hand from its job's spec and paths (no Snakemake) writes what the rule wrote."""

from __future__ import annotations

import filecmp
import json
import shlex
import shutil

import pytest

from pipeline_run import reference_run, snakemake

from whisper_ptq import steps


def job_commands(wf, run, *rules):
    """{rule: [argv after `whisper_ptq.cli`]} of the jobs `snakemake -n -p -R <rules>` plans."""
    out = snakemake(wf, run, "-n", "-p", "--forcerun", *rules).stdout
    jobs = {}
    for line in out.splitlines():
        if "python -m whisper_ptq.cli " in line:
            argv = shlex.split(line.split("python -m whisper_ptq.cli ", 1)[1].split(" > ")[0])
            jobs.setdefault(argv[0], []).append(argv)
    return {r: jobs[r] for r in rules}


def run_in(tmp, run, argv, monkeypatch):
    """Run the job ``argv`` in-process in ``tmp``, with copies of its input files from ``run``."""
    step, rest = argv[0], argv[1:]
    i, j = rest.index("--spec"), rest.index("--threads")
    spec, threads = json.loads(rest[i + 1]), int(rest[j + 1])
    input, output = steps.parse_paths([w for k, w in enumerate(rest) if k not in (i, i + 1, j, j + 1)])
    for path in (p for v in input.values() for p in steps.as_list(v)):
        if (run / path).is_file() and not (tmp / path).exists():
            (tmp / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run / path, tmp / path)
    monkeypatch.chdir(tmp)
    steps.run(step, spec, input, output, threads)
    return output


def same_tree(a, b):
    if a.is_file():
        return filecmp.cmp(a, b, shallow=False)
    cmp = filecmp.dircmp(a, b, ignore=[".snakemake_timestamp"])  # Snakemake's, in a directory()
    return (not cmp.left_only and not cmp.right_only and not cmp.funny_files
            and all(filecmp.cmp(a / f, b / f, shallow=False) for f in cmp.common_files)
            and all(same_tree(a / d, b / d) for d in cmp.common_dirs))


@pytest.mark.slow
def test_a_step_run_from_its_jobs_spec_and_paths_writes_what_the_rule_wrote(
        tmp_path_factory, tiny_en_dir, mini_dir, tmp_path, monkeypatch):
    wf, run = reference_run(tmp_path_factory, tiny_en_dir, mini_dir)
    jobs = {**job_commands(wf, run, "download", "model"), **job_commands(wf, run, "score", "report")}
    assert [len(jobs[r]) for r in ("download", "model", "score", "report")] == [1, 1, 3, 1]
    for rule in ("download", "model", "score", "report"):
        for argv in jobs[rule]:
            output = run_in(tmp_path, run, argv, monkeypatch)
            for path in output.values():  # figures too: drawn without dates (report/style.py)
                assert same_tree(run / path, tmp_path / path), f"{rule}: {path} differs"
    assert set(output) >= {"csv", "md", "tex", "summary", "config", "dwer", "pareto_cpu"}
