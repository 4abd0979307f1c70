"""Fabricated openslr-style archives for the data tests (names and bytes are the caller's)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    """Write ``path`` as a .tar.gz of regular files ``{member name: content}``."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
