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


def speechlike(seconds: float, seed: int, sr: int = 16000):
    """A voiced-speech stand-in: harmonics of a wandering pitch under a syllable-rate
    envelope, plus a little noise (float32 in [-1, 1])."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    pitch = 120 + 40 * rng.random() + 15 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + rng.random() * 6)) ** 2
    audio = 0.2 * voiced * envelope + 0.01 * rng.standard_normal(t.size)
    return (audio / np.abs(audio).max() * 0.8).astype(np.float32)


def make_mirror(root: Path, splits=("test-clean", "test-other"), speakers=3,
                utterances=3) -> Path:
    """A fabricated openslr mirror: ``<split>.tar.gz`` archives laid out like LibriSpeech's
    (LibriSpeech/<split>/<speaker>/<chapter>/*.flac + .trans.txt) and ``md5sum.txt``; every
    utterance 4–6 s of speechlike audio with an upper-case reference line."""
    import soundfile as sf

    from whisper_ptq.data import md5_of

    root.mkdir(parents=True, exist_ok=True)
    sums = []
    for s, split in enumerate(splits):
        members = {}
        for spk in range(speakers):
            speaker, chapter = str(100 + 10 * s + spk), str(500 + spk)
            lines = []
            for i in range(utterances):
                uid = f"{speaker}-{chapter}-{i:04d}"
                buf = io.BytesIO()
                seed = 1000 * s + 10 * spk + i
                sf.write(buf, speechlike(4 + 2 * ((seed * 7) % 10) / 10, seed), 16000,
                         format="FLAC")
                members[f"LibriSpeech/{split}/{speaker}/{chapter}/{uid}.flac"] = buf.getvalue()
                lines.append(f"{uid} WORDS OF UTTERANCE {i} BY SPEAKER {speaker}\n")
            members[f"LibriSpeech/{split}/{speaker}/{chapter}/{speaker}-{chapter}.trans.txt"] = (
                "".join(lines).encode())
        archive = tar_gz(root / f"{split}.tar.gz", members)
        sums.append(f"{md5_of(archive)}  {archive.name}\n")
    (root / "md5sum.txt").write_text("".join(sums))
    return root
