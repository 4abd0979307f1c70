"""Audio → Whisper log-mel features, computed once per (model, split) and cached.

The cache is one safetensors file plus a JSONL manifest (id, speaker, duration, reference,
n_frames). Whisper pads each utterance to 30 s (3000 frames) with zeros, and after its
max-minus-8 floor those frames all hold one per-utterance constant; the file keeps only the
frames before that trailing constant run (key = utterance id, float32 ``[n_mels, kept]``)
and its header metadata records each utterance's full frame count and the constant's bits,
so :class:`FeatureCache` rebuilds the padded log-mel bit for bit. Utterances over 30 s are
kept whole, never truncated. No pickle anywhere; transcription jobs never touch audio.
"""

from __future__ import annotations

import json
import os
import struct
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import PipelineError
from .data import list_utterances
from .io import atomic_path, read_jsonl, write_jsonl

SAMPLE_RATE = 16000
NB_MAX_FRAMES = 3000  # one 30 s Whisper window of log-mel frames


def read_flac(path: str | os.PathLike) -> np.ndarray:
    """Decode a 16 kHz mono FLAC to float32; a clear error for unreadable or empty files."""
    import soundfile as sf

    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise PipelineError(f"cannot decode audio file {path}: {e}") from e
    if audio.ndim != 1:
        raise PipelineError(f"audio file {path} has {audio.shape[1]} channels; expected mono")
    if sr != SAMPLE_RATE:
        raise PipelineError(f"audio file {path} is sampled at {sr} Hz; expected {SAMPLE_RATE}")
    if audio.size == 0:
        raise PipelineError(f"audio file {path} is empty (0 samples)")
    return audio


def log_mel(extractor, audio: np.ndarray) -> np.ndarray:
    """Whisper log-mel of one utterance: padded to 30 s, never truncated."""
    long = audio.size > extractor.n_samples
    out = extractor(
        audio,
        sampling_rate=SAMPLE_RATE,
        return_tensors="np",
        truncation=not long,
        padding="longest" if long else "max_length",
    )
    return np.ascontiguousarray(out.input_features[0], dtype=np.float32)


def whole_windows(feats: np.ndarray) -> np.ndarray:
    """A [n_mels, T] log-mel padded to whole 30 s windows ([n_mels, n * 3000]) with the
    utterance's minimum (silence after Whisper's log-mel clamp): how the runtimes without
    transformers' long-form decoding take an utterance over 30 s."""
    n = -(-feats.shape[-1] // NB_MAX_FRAMES)
    padded = np.full((feats.shape[0], n * NB_MAX_FRAMES), feats.min(), dtype=np.float32)
    padded[:, :feats.shape[-1]] = feats
    return padded


def window_batch(feats: np.ndarray) -> np.ndarray:
    """A [n_mels, T > 3000] log-mel as a batch of its consecutive 30 s windows
    ([n, n_mels, 3000], see whole_windows), decoded independently by the runtimes: no
    timestamp-based seeking as in transformers' long-form decoding, so a word cut at a window
    edge may be misheard."""
    padded = whole_windows(feats)
    return np.ascontiguousarray(
        padded.reshape(feats.shape[0], -1, NB_MAX_FRAMES).transpose(1, 0, 2))


def trailing_constant_start(feats: np.ndarray) -> int:
    """First frame of the trailing run of frames whose every value has the bits of the last
    value (Whisper's zero padding after the floor); ``n_frames`` when the last frame is not
    constant. Taken from the tensor itself, so cutting there is lossless by construction."""
    bits = feats.view(np.uint32)
    constant = (bits == bits[0, -1]).all(axis=0)
    if not constant[-1]:
        return feats.shape[-1]
    varying = np.flatnonzero(~constant)
    return int(varying[-1]) + 1 if varying.size else 0


PADDING_KEY = "padding"  # header metadata: {id: [n_frames, "%08x" bits of the pad constant]}


class _StreamingSafetensors:
    """Writes a safetensors file one tensor at a time, so memory stays one utterance.

    The header space is reserved up front from the known keys with every number at its
    widest (the format allows a header padded with spaces); data go straight after it.
    """

    def __init__(self, f, keys, n_mels: int, metadata: dict):
        self.f, self.n_mels, self.metadata = f, n_mels, metadata
        widest = {k: (10**12 - 1, 10**19 - 1, 0xFFFFFFFF, 10**12 - 1) for k in keys}
        self.reserve = -(-len(self._header(widest)) // 8) * 8  # data start 8-byte aligned
        self.entries: dict[str, tuple[int, int, int, int]] = {}  # kept, end, bits, frames
        self.offset = 0
        f.seek(8 + self.reserve)

    def _header(self, entries) -> bytes:
        header = {k: {"dtype": "F32", "shape": [self.n_mels, kept],
                      "data_offsets": [end - kept * self.n_mels * 4, end]}
                  for k, (kept, end, _, _) in entries.items()}
        padding = {k: [frames, f"{bits:08x}"] for k, (_, _, bits, frames) in entries.items()}
        header["__metadata__"] = {**self.metadata, PADDING_KEY: json.dumps(padding)}
        return json.dumps(header, separators=(",", ":")).encode()

    def add(self, key: str, feats: np.ndarray) -> None:
        cut = trailing_constant_start(feats)
        kept = np.ascontiguousarray(feats[:, :cut], dtype="<f4")
        self.f.write(kept.tobytes())
        self.offset += kept.nbytes
        self.entries[key] = (cut, self.offset, int(feats.view(np.uint32)[0, -1]), feats.shape[-1])

    def finish(self) -> None:
        header = self._header(self.entries)
        if len(header) > self.reserve:
            raise PipelineError(f"feature cache header needs {len(header)} bytes, "
                                f"{self.reserve} reserved")
        self.f.seek(0)
        self.f.write(struct.pack("<Q", self.reserve) + header.ljust(self.reserve, b" "))


def compute_features(split_dir, model_dir, out_tensors, out_manifest, split: str = "") -> int:
    """Compute and cache features for every utterance of an extracted split, writing each
    utterance's frames as it goes (memory does not grow with the split)."""
    from tqdm import tqdm
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor.from_pretrained(model_dir)
    utts = list_utterances(split_dir, split)
    mixer = noise_mixer(split, utts)  # None for a plain split; see whisper_ptq.noise
    rows = []
    with atomic_path(out_tensors) as tmp, open(tmp, "wb") as f:
        out = _StreamingSafetensors(f, [u.id for u in utts], extractor.feature_size,
                                    {"split": split, "model_dir": str(model_dir)})
        for u in tqdm(utts, desc=f"features {split}", unit="utt"):
            audio = read_flac(u.path)
            if mixer is not None:
                audio = mixer(u.id, u.speaker, audio)
            feats = log_mel(extractor, audio)
            out.add(u.id, feats)
            rows.append(
                {
                    "id": u.id,
                    "speaker": u.speaker,
                    "duration": audio.size / SAMPLE_RATE,
                    "reference": u.reference,
                    "n_frames": int(feats.shape[-1]),
                    **({"noise": mixer.kind, "snr_db": mixer.snr} if mixer is not None else {}),
                }
            )
        out.finish()
    write_jsonl(out_manifest, rows)
    return len(rows)


def noise_mixer(split: str, utts):
    """The NoiseMixer of a derived split name (test-clean+white10), or None for a plain one.

    ``split_dir`` is then the clean split's directory; babble draws from its utterances.
    """
    from .noise import NoiseMixer, parse_split

    if "+" not in split:
        return None
    name = parse_split(split)
    pool = [(u.id, u.speaker, (lambda p=u.path: read_flac(p))) for u in utts]
    return NoiseMixer(name.kind, name.snr_db, pool)


def load_manifest(path) -> list[dict]:
    return read_jsonl(path)


def select(rows: list[dict], limit: int | None, exclude=(), split: str = "") -> list[dict]:
    """Deterministic subset: utterances not in ``exclude``, at most ``limit`` of them.

    With a limit, speakers are taken round-robin (in id order) so that a quick run still
    spans many speakers, which the speaker-level statistics need.
    """
    exclude = set(exclude)
    pool = [r for r in rows if r["id"] not in exclude]
    if limit is not None and limit < len(pool):
        by_spk = defaultdict(list)
        for r in sorted(pool, key=lambda r: r["id"]):
            by_spk[r["speaker"]].append(r)
        queues = [by_spk[s] for s in sorted(by_spk)]
        chosen = []
        depth = 0
        while len(chosen) < limit:
            for q in queues:
                if depth < len(q) and len(chosen) < limit:
                    chosen.append(q[depth])
            depth += 1
        pool = sorted(chosen, key=lambda r: r["id"])
    if not pool:
        raise PipelineError(
            f"split {split or '?'}: no utterances left to transcribe "
            f"(limit={limit}, {len(rows)} in the cache, {len(exclude)} excluded)"
        )
    return pool


class FeatureCache:
    """Lazy reader of a features file: tensors are read only when asked for.

    ``get`` returns the padded log-mel (the trailing constant frames put back); a file
    without padding metadata (tensors stored whole) is read as it is.
    """

    def __init__(self, path):
        from safetensors import safe_open

        self.path = Path(path)
        self._f = safe_open(str(path), framework="pt")
        self._padding = json.loads((self._f.metadata() or {}).get(PADDING_KEY, "{}"))

    def get(self, uid: str):
        import torch

        kept = self._f.get_tensor(uid)
        if uid not in self._padding or kept.shape[-1] == self._padding[uid][0]:
            return kept
        frames, bits = self._padding[uid]
        out = torch.empty((*kept.shape[:-1], frames), dtype=kept.dtype)
        out[..., :kept.shape[-1]] = kept
        # filled through an int32 view: the constant's exact bits, whatever its value
        out.view(torch.int32)[..., kept.shape[-1]:] = int(np.uint32(int(bits, 16)).view(np.int32))
        return out

    def keys(self):
        return list(self._f.keys())


def calibration_ids(rows: list[dict], n: int, split: str = "") -> list[str]:
    """The ``n`` calibration utterances of a split: never scored, for any entry or device.

    A deterministic choice that does not depend on ``limit`` or on the entries: utterances
    ordered by the SHA-256 of their id (a fixed pseudo-random order that mixes speakers),
    the first ``n`` taken. The transcribe step excludes exactly these ids before ``limit``.
    """
    import hashlib

    if n < 1:
        raise PipelineError(f"calibration: n must be at least 1, not {n}")
    if n >= len(rows):
        raise PipelineError(
            f"calibration split {split or '?'} has {len(rows)} utterances; calibrating on "
            f"n={n} of them would leave none to score (lower calibration.n)"
        )
    order = sorted(rows, key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    return sorted(r["id"] for r in order[:n])


def calibration_batches(features_path, manifest_path, n: int, batch_size: int = 8,
                        split: str = "") -> tuple[list[str], list]:
    """The calibration utterances' features as ``[B, n_mels, 3000]`` batches (ids, batches).

    Utterances longer than 30 s are cut to their first 30 s (calibration only needs
    activation statistics); the cache returns shorter ones padded to 30 s.
    """
    import torch

    ids = calibration_ids(load_manifest(manifest_path), n, split)
    cache = FeatureCache(features_path)
    feats = [cache.get(uid)[..., :NB_MAX_FRAMES] for uid in ids]
    batches = [torch.stack(feats[i:i + batch_size]) for i in range(0, len(feats), batch_size)]
    return ids, batches
