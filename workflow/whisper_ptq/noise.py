"""Noisy derived splits: ``<split>+white<SNR>`` and ``<split>+babble<SNR>``.

A derived split is the clean split with noise added to every utterance at a fixed
signal-to-noise ratio (dB), computed in the features step from the clean audio:

* ``white``: Gaussian white noise;
* ``babble``: the sum of ``BABBLE_TALKERS`` other utterances of the same split, from
  speakers other than the target's, each scaled to unit RMS, started at a random offset and
  looped to the target's length.

SNR = 10·log10(P_signal / P_noise), P = mean square over the whole utterance; the noise is
scaled so that the mix hits the target exactly (no clipping: features are float). Every
random draw comes from a generator seeded by (``NOISE_SEED``, noise kind, utterance id), so
an utterance gets the same noise whatever the limit, the order or the machine, and the
derived split keeps the clean split's utterance ids (pairable with it and with fp32).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from . import PipelineError

NOISE_SEED = 0
BABBLE_TALKERS = 6
KINDS = ("white", "babble")
# test-clean, test-clean+white10, test-clean+babble-5, test-clean+white2.5
SPLIT_RE = re.compile(r"^(?P<base>[a-z]+-[a-z]+)(?:\+(?P<kind>[a-z]+)(?P<snr>-?\d+(?:\.\d+)?))?$")
SPLIT_PATTERN = r"[a-z]+-[a-z]+(\+(white|babble)-?\d+(\.\d+)?)?"


@dataclass(frozen=True)
class SplitName:
    base: str
    kind: str | None = None
    snr_db: float | None = None

    @property
    def noisy(self) -> bool:
        return self.kind is not None


def parse_split(name: str) -> SplitName:
    """``test-clean+babble5`` → SplitName('test-clean', 'babble', 5.0); plain names pass."""
    m = SPLIT_RE.match(name)
    if not m or (m["kind"] is not None and m["kind"] not in KINDS):
        raise PipelineError(
            f"split {name!r}: expected a LibriSpeech split (test-clean) or a noisy derived "
            f"split <split>+<{'|'.join(KINDS)}><SNR dB> (test-clean+white10, test-clean+babble-5)")
    if m["kind"] is None:
        return SplitName(m["base"])
    return SplitName(m["base"], m["kind"], float(m["snr"]))


def base_split(name: str) -> str:
    return parse_split(name).base


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def snr_db(signal: np.ndarray, noise: np.ndarray) -> float:
    return 10.0 * np.log10(power(signal) / power(noise))


def scale_to_snr(signal: np.ndarray, noise: np.ndarray, target_db: float) -> np.ndarray:
    """``noise`` scaled so that 10·log10(P(signal)/P(noise)) equals ``target_db``."""
    ps, pn = power(signal), power(noise)
    if ps == 0:
        raise PipelineError("cannot set an SNR on a silent utterance (signal power 0)")
    if pn == 0:
        raise PipelineError("cannot set an SNR with silent noise (noise power 0)")
    gain = np.sqrt(ps / (pn * 10.0 ** (target_db / 10.0)))
    return (noise.astype(np.float64) * gain).astype(np.float32)


def utterance_rng(kind: str, uid: str, seed: int = NOISE_SEED) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{kind}/{uid}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def white(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def loop_to(x: np.ndarray, n: int, offset: int) -> np.ndarray:
    """``x`` started at ``offset`` and repeated circularly to length ``n``."""
    idx = (offset + np.arange(n)) % x.size
    return x[idx]


def babble(n: int, talkers: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Sum of the talkers' utterances, each at unit RMS from a random offset, length ``n``."""
    if not talkers:
        raise PipelineError("babble noise needs at least one other utterance")
    out = np.zeros(n, dtype=np.float64)
    for t in talkers:
        rms = np.sqrt(power(t))
        if rms == 0:
            continue
        out += loop_to(t, n, int(rng.integers(0, t.size))) / rms
    return out.astype(np.float32)


class NoiseMixer:
    """Adds one derived split's noise to the utterances of its clean split.

    ``pool`` lists (utterance id, speaker, loader) of the clean split: babble draws its
    talkers from it (other speakers only); loaders are called lazily, results cached.
    """

    def __init__(self, kind: str, snr: float, pool=(), *, seed: int = NOISE_SEED,
                 talkers: int = BABBLE_TALKERS):
        if kind not in KINDS:
            raise PipelineError(f"unknown noise kind {kind!r}; known: {', '.join(KINDS)}")
        self.kind, self.snr, self.seed, self.talkers = kind, float(snr), seed, talkers
        self.pool = sorted(pool, key=lambda p: p[0])
        self._cache: dict[str, np.ndarray] = {}

    def _load(self, uid, loader) -> np.ndarray:
        if uid not in self._cache:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[uid] = loader()
        return self._cache[uid]

    def talkers_for(self, uid: str, speaker: str, rng) -> list[str]:
        others = [p for p in self.pool if p[1] != speaker and p[0] != uid]
        if not others:
            raise PipelineError(f"babble for {uid}: no utterance of another speaker in the split")
        k = min(self.talkers, len(others))
        pick = rng.choice(len(others), size=k, replace=False)
        return [others[i] for i in sorted(pick)]

    def noise_for(self, uid: str, speaker: str, n: int) -> np.ndarray:
        rng = utterance_rng(self.kind, uid, self.seed)
        if self.kind == "white":
            return white(n, rng)
        chosen = self.talkers_for(uid, speaker, rng)
        return babble(n, [self._load(u, load) for u, _, load in chosen], rng)

    def __call__(self, uid: str, speaker: str, audio: np.ndarray) -> np.ndarray:
        noise = self.noise_for(uid, speaker, audio.size)
        mixed = audio.astype(np.float64) + scale_to_snr(audio, noise, self.snr)
        return mixed.astype(np.float32)
