"""Small helpers for writing outputs atomically.

Every file the pipeline produces is written to a temporary sibling first and renamed into
place once complete, so an interrupted job never leaves an output that looks finished.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file or directory is removed and ``path`` is left
    untouched (absent if it did not exist).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    for stale in path.parent.glob(f"{glob.escape(prefix)}*"):  # left by a killed earlier try
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        # mkstemp/mkdtemp create 0600/0700; give the output the usual umask-based mode
        mask = os.umask(0)
        os.umask(mask)
        if tmp.exists():
            os.chmod(tmp, (0o777 if is_dir else 0o666) & ~mask)
        if is_dir:
            if path.exists():
                shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def write_jsonl(path: str | os.PathLike, rows) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def dir_bytes(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> int:
    """Total size of the regular files under ``path`` (optionally only these suffixes)."""
    total = 0
    for p in Path(path).rglob("*"):
        if p.is_file() and (suffixes is None or p.name.endswith(suffixes)):
            total += p.stat().st_size
    return total
