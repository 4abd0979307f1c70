"""What the benchmark scripts share: the load average beside each repeat, and the options of
a run over one mini split archive."""

from __future__ import annotations

import argparse
from pathlib import Path


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages: a timing on a shared machine means little without."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def split_parser(doc: str, *, repeats: int, out: Path) -> argparse.ArgumentParser:
    """Options of a benchmark over the first utterances of one split archive."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--archive", required=True, type=Path)
    p.add_argument("--split", default="test-clean")
    p.add_argument("--utterances", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--out", type=Path, default=out)
    return p
