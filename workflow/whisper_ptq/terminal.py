"""What the Snakefile's onsuccess / onerror hooks print. Runs in Snakemake's own Python, so it
imports nothing beyond the standard library (the summary table is written by the report job)."""

from __future__ import annotations

import re
import textwrap
from collections import defaultdict
from pathlib import Path

BAR = "─" * 78


def success(summary: str | Path, report_files) -> str:
    """The report's compact Table 1 (if this run made one) and where the report files are."""
    lines = [BAR, "whisper-ptq: done."]
    summary = Path(summary)
    if summary.is_file():
        lines += ["", summary.read_text().rstrip(), ""]
    folders = defaultdict(list)
    for f in map(Path, report_files):
        if f.exists():
            folders[f.parent].append(f.name)
    for folder, names in folders.items():
        lines.append(f"Report files in {folder}/:")
        lines += textwrap.wrap("  ".join(names), 76, initial_indent="  ",
                               subsequent_indent="  ", break_on_hyphens=False)
    if folders:
        lines.append("HTML report: snakemake --report report.html"
                     " --configfile results/report/config.yaml")
    lines.append(BAR)
    return "\n".join(lines)


# Snakemake's error block: "Error in rule NAME:" ... "    log: PATH (check log file(s) ...)"
_RULE = re.compile(r"^Error in rule (\S+?):\s*$")
_LOG = re.compile(r"^\s+log: (.+?)(?: \(check log file\(s\) for error details\))?\s*$")


def _paths(logs) -> list[Path]:
    """Snakemake hands the hooks its log file(s): a path or a list of them."""
    if not logs:
        return []
    return [Path(p) for p in ([logs] if isinstance(logs, (str, Path)) else logs)]


def failed_jobs(snakemake_log) -> list[tuple[str, list[str]]]:
    """(rule, its log files) of every failed job named in Snakemake's own log file(s)."""
    text = "\n".join(p.read_text(errors="replace") for p in _paths(snakemake_log) if p.is_file())
    out, rule = [], None
    for line in text.splitlines():
        m = _RULE.match(line)
        if m:
            rule = m.group(1)
            out.append((rule, []))
            continue
        m = _LOG.match(line)
        if rule and m:
            out[-1][1].extend(p.strip() for p in m.group(1).split(","))
            rule = None
    return out


def cause(log: str | Path) -> str | None:
    """The pipeline's one-line error (``error: ...``, whisper_ptq.cli) in a job log, if any."""
    path = Path(log)
    if not path.is_file():
        return None
    found = [line[len("error: "):] for line in path.read_text(errors="replace").splitlines()
             if line.startswith("error: ")]
    return found[-1] if found else None


def failure(snakemake_log) -> str:
    """Per failed job: its rule, its log and, when the pipeline stated one, the cause."""
    jobs = failed_jobs(snakemake_log)
    lines = [BAR]
    if not jobs:
        logs = ", ".join(map(str, _paths(snakemake_log))) or "(none)"
        lines.append(f"whisper-ptq: failed; Snakemake's log: {logs}")
    for rule, logs in jobs:
        for log in logs or ["(no log file)"]:
            lines.append(f"whisper-ptq: rule {rule} failed; log: {log}")
            why = cause(log)
            if why:
                lines.append(f"  cause: {why}")
    lines.append(BAR)
    return "\n".join(lines)
