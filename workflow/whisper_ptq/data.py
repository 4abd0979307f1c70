"""LibriSpeech archives: download with an md5 check, atomic extraction, utterance listing."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile

import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import PipelineError
from .io import atomic_path

CHUNK = 1 << 20


def md5_of(path: str | os.PathLike) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def archive_url(base_url: str, split: str) -> str:
    return f"{base_url.rstrip('/')}/{split}.tar.gz"


# ends every "could not reach" error: the way out when there is no network
OFFLINE_HINT = "offline? see README.md, 'Offline / air-gapped use'"


def _open_url(url: str):
    try:
        return urllib.request.urlopen(url, timeout=60)
    except (OSError, ValueError) as e:  # URLError is an OSError
        raise PipelineError(f"cannot fetch {url}: {e} ({OFFLINE_HINT})") from e


def fetch_md5sums(base_url: str) -> dict[str, str]:
    """Parse ``{base_url}/md5sum.txt`` (openslr format: ``<md5>  <file name>`` per line)."""
    url = f"{base_url.rstrip('/')}/md5sum.txt"
    with _open_url(url) as r:
        text = r.read().decode("utf-8", errors="replace")
    sums = {}
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or len(parts[0]) != 32:
            raise PipelineError(f"{url} line {n}: expected '<md5>  <file>', got {line!r}")
        sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def expected_md5(base_url: str, split: str, override: str | None = None) -> str:
    if override:
        return override.lower()
    name = f"{split}.tar.gz"
    sums = fetch_md5sums(base_url)
    if name not in sums:
        raise PipelineError(
            f"{base_url.rstrip('/')}/md5sum.txt lists no checksum for {name}; "
            f"set md5.{split} in config.yaml"
        )
    return sums[name]


def known_md5(base_url: str, split: str, override: str | None = None) -> str:
    """The md5 the download step will check, where it is known without the network: the
    config's ``md5.<split>``, or the line of a local (file://) mirror's md5sum.txt; "" for a
    remote mirror (the step reads its md5sum.txt itself). The ``download`` rule's param, so a
    changed archive with its updated checksum re-runs the download."""
    if override:
        return override.lower()
    if not base_url.startswith("file:"):
        return ""
    try:
        return expected_md5(base_url, split)
    except PipelineError:
        return ""  # unreadable here: the step itself reports it


def download(url: str, dest: str | os.PathLike, md5: str) -> Path:
    """Download ``url`` (https, http or file://) to ``dest`` and verify its md5.

    The file appears at ``dest`` only if it is complete and its md5 matches.
    """
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        with _open_url(url) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, CHUNK)
        got = md5_of(tmp)
        if got != md5.lower():
            raise PipelineError(
                f"md5 mismatch for {url}: expected {md5.lower()}, got {got} "
                f"(corrupt or truncated download, or wrong checksum); nothing was kept"
            )
    return dest


def extract_split(archive: str | os.PathLike, split: str, dest: str | os.PathLike) -> Path:
    """Extract ``LibriSpeech/<split>/`` from an openslr archive into ``dest`` atomically.

    ``dest`` becomes the split's directory (speaker/chapter/*.flac + *.trans.txt).
    A truncated or corrupt archive raises PipelineError and leaves ``dest`` absent.
    """
    archive, dest = Path(archive), Path(dest)
    prefix = f"LibriSpeech/{split}/"
    with atomic_path(dest, is_dir=True) as tmp:
        n = 0
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    if not member.name.startswith(prefix) or not (member.isfile() or member.isdir()):
                        continue
                    name, rel = member.name, member.name[len(prefix):]
                    if not rel:
                        continue
                    member.name = rel
                    tar.extract(member, tmp, filter="data")
                    n += member.isfile()
        except (tarfile.OutsideDestinationError, tarfile.AbsolutePathError) as e:
            raise PipelineError(f"archive {archive}: member {name!r} points outside {prefix} "
                                f"(path traversal); refusing to extract it, nothing was kept") from e
        except tarfile.FilterError as e:  # e's text names the temporary directory: leave it out
            raise PipelineError(f"archive {archive}: member {name!r} is unsafe "
                                f"({type(e).__name__}); refusing to extract it, nothing was kept") from e
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise PipelineError(f"archive {archive} is truncated or corrupt: {e}") from e
        if n == 0:
            raise PipelineError(f"archive {archive} contains no files under {prefix}")
        # fail now, not later, on a broken layout; name the archive's paths, not `tmp`
        list_utterances(tmp, split, shown_as=f"{archive}: {prefix.rstrip('/')}")
    return dest


@dataclass(frozen=True)
class Utterance:
    id: str
    speaker: str
    path: Path
    reference: str


def list_utterances(split_dir: str | os.PathLike, split: str = "",
                    shown_as: str | None = None) -> list[Utterance]:
    """All utterances of an extracted split, sorted by id, with their reference text.

    Raises PipelineError if a FLAC has no reference line or a reference has no FLAC; its
    paths start with ``shown_as`` instead of ``split_dir`` when given.
    """
    split_dir = Path(split_dir)
    name = split or split_dir.name
    root = shown_as or str(split_dir)

    def show(p: Path) -> str:
        return f"{root}/{p.relative_to(split_dir)}"

    refs: dict[str, str] = {}
    for trans in sorted(split_dir.rglob("*.trans.txt")):
        for n, line in enumerate(trans.read_text().splitlines(), 1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            if not text.strip():
                raise PipelineError(f"{show(trans)} line {n}: utterance {uid} has an empty reference")
            refs[uid] = text.strip()
    flacs = {p.stem: p for p in split_dir.rglob("*.flac")}
    missing_ref = sorted(set(flacs) - set(refs))
    if missing_ref:
        raise PipelineError(
            f"split {name}: {len(missing_ref)} utterance(s) without a reference line in any "
            f"*.trans.txt, e.g. {show(flacs[missing_ref[0]])}"
        )
    missing_audio = sorted(set(refs) - set(flacs))
    if missing_audio:
        raise PipelineError(
            f"split {name}: {len(missing_audio)} reference line(s) without a FLAC file, "
            f"e.g. {missing_audio[0]}"
        )
    if not flacs:
        raise PipelineError(f"split {name}: no FLAC files under {root}")
    return [Utterance(uid, uid.split("-")[0], flacs[uid], refs[uid]) for uid in sorted(flacs)]


