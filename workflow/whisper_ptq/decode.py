"""Batched greedy decoding of cached features, with a timing protocol.

The decoding loop alone: a loaded model in, hypotheses and timings out. It imports neither
``checkpoint`` nor ``quantizers`` (quanto's calibration runs it); loading a checkpoint and
writing the step's files is ``transcribe``'s.

Timing protocol (recorded in each ``<split>.timing.json``):

* threads are fixed (``torch.set_num_threads``) before the model is loaded, and recorded;
* ``warmup_batches`` batches are run first and not timed (their utterances are transcribed
  again, timed, with the rest), and the last batch too when it is smaller than those (every
  batch shape is met before timing: a compiled model compiles per shape);
* each batch is timed in two parts: the encoder forward, then ``generate`` on the encoder
  output (decoder) plus token decoding; on GPU ``torch.cuda.synchronize`` brackets each part;
* RTF = Σ timed seconds / Σ audio seconds, RTFx = 1 / RTF; tokens/s = generated tokens /
  decoder seconds;
* regime ``throughput`` uses ``decoding.batch_size``; ``latency`` uses batch 1 and also
  reports per-utterance latency percentiles;
* memory: peak resident set size of the process, of the timed loop alone, the resident set
  left after it (``resident_rss_mb``), and on GPU peak allocated / reserved CUDA memory
  during transcription; the allocator's free memory is given back (glibc ``malloc_trim``)
  before the resident set is read, so it counts only memory in use.

Temperature fallback (``decoding.fallback``, off unless configured): after the greedy pass,
a hypothesis whose text compresses too well (a loop) or whose average log-probability is too
low is decoded again by sampling, one temperature after another, as openai-whisper's
``transcribe()`` does; the temperature each hypothesis was kept at goes into its row, and the
re-decoding counts in the decoder seconds. Utterances over 30 s stay greedy (temperature
null in their rows).

Utterances longer than 30 s are decoded alone with Whisper's sequential long-form decoding;
their time counts in the total (``longform_seconds``) but not in the encoder/decoder split.

Order and shards: a split's selected utterances (calibration ones excluded, then ``limit``)
form one list, ≤ 30 s ones longest first (a batch then holds transcripts of similar length,
so fewer decoder steps go to padding), then the longer ones; every entry and device uses the
same list, recorded as ``order`` in the timing file. ``shard_size`` cuts it into shards, one
job each; with a multiple of the batch size every batch equals an unsharded run's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import statistics
import time
import zlib

from . import PipelineError
from .features import NB_MAX_FRAMES, FeatureCache, load_manifest, select
from .schema import schema_default, with_defaults

REGIMES = ("throughput", "latency")


def generation_kwargs(model, decoding: dict) -> dict:
    decoding = with_defaults("decoding", decoding)  # keys left out: the schema's defaults
    kwargs = {"num_beams": 1, "do_sample": False, "max_new_tokens": decoding["max_new_tokens"]}
    if getattr(model.generation_config, "is_multilingual", False):
        kwargs["language"] = decoding["language"]
        kwargs["task"] = decoding["task"]
    return kwargs


def fallback_options(decoding: dict | None) -> dict | None:
    """``decoding.fallback`` with the schema's defaults filled in; None: greedy alone."""
    given = (decoding or {}).get("fallback")
    return None if given is None else {**schema_default("decoding", "fallback"), **given}


def compression_ratio(text: str) -> float:
    """openai-whisper's: the text's bytes over its zlib-compressed bytes (a loop compresses
    well)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def needs_fallback(text: str, avg_logprob: float, options: dict) -> bool:
    return (compression_ratio(text.strip()) > options["compression_ratio_threshold"]
            or avg_logprob < options["logprob_threshold"])


def with_fallback(decode, n: int, options: dict | None):
    """Decode ``n`` utterances greedily, then again at each of ``options``' temperatures
    those that still need it (the last temperature's result is kept whatever it gives).

    ``decode(indices, temperature)`` → (texts, average log-probabilities, tokens generated)
    for those utterances; temperature 0 is greedy. Returns the texts, the temperature each
    was kept at (None without ``options``: the greedy pass alone), and the tokens generated
    in all passes."""
    texts, logprobs, tokens = decode(list(range(n)), 0.0)
    if options is None:
        return texts, None, tokens
    kept = [0.0] * n
    todo = [i for i in range(n) if needs_fallback(texts[i], logprobs[i], options)]
    for temperature in options["temperatures"]:
        if not todo:
            break
        got, got_logprobs, got_tokens = decode(todo, temperature)
        tokens += got_tokens
        for i, text in zip(todo, got):
            texts[i], kept[i] = text, temperature
        todo = [i for i, text, lp in zip(todo, got, got_logprobs)
                if needs_fallback(text, lp, options)]
    return texts, kept, tokens


def sampling_seed(seed: int, feats, temperature: float) -> int:
    """A seed for one sampling pass from what it decodes (the utterances' features as a
    NumPy array, in order) and its temperature: the same utterances sampled together get the
    same draws in any shard or run."""
    import numpy as np

    data = np.ascontiguousarray(feats, dtype=np.float32).tobytes()
    return zlib.crc32(f"{seed}:{temperature}".encode(), zlib.crc32(data))


def average_logprobs(picked, generated, eos: int) -> list[float]:
    """openai-whisper's average log-probability per row: the log-probabilities ``picked`` of
    the tokens ``generated`` (both [batch, steps]) summed up to and with the first end token,
    over the text token count + 1."""
    out = []
    for row, logprobs in zip(generated, picked):
        ends = [i for i, token in enumerate(row) if token == eos]
        n = ends[0] + 1 if ends else len(row)
        out.append(float(sum(logprobs[:n])) / ((n - 1 if ends else n) + 1))
    return out


def forced_prompt(generation_config, decoding: dict) -> list[int]:
    """The forced decoder prefix transformers' generate() uses (no timestamps), for the
    runtimes that take it as input: SOT, then language and task for multilingual models
    only, then no-timestamps."""
    g = generation_config
    tokens = [g.decoder_start_token_id]
    if getattr(g, "is_multilingual", False):
        language = decoding.get("language", "en")
        tokens.append(g.lang_to_id[f"<|{language}|>" if not language.startswith("<|") else language])
        tokens.append(g.task_to_id[decoding.get("task", "transcribe")])
    tokens.append(g.no_timestamps_token_id)
    return tokens


def model_input_dtype(model):
    return model.model.encoder.conv1.weight.dtype


def ordered_rows(rows: list[dict], limit=None, exclude=(), split: str = "",
                 sort: bool = True) -> list[dict]:
    """The split's one utterance order (see the module doc); ``sort=False``: select()'s
    order (the manifest's; id order under a limit), the order before issue 10."""
    chosen = select(rows, limit, exclude, split)
    if not sort:
        return chosen
    key = lambda r: (-r["duration"], r["id"])  # noqa: E731
    return (sorted((r for r in chosen if r["n_frames"] <= NB_MAX_FRAMES), key=key)
            + sorted((r for r in chosen if r["n_frames"] > NB_MAX_FRAMES), key=key))


def shard_bounds(n_rows: int, shard_size: int | None) -> list[tuple[int, int]]:
    """[start, stop) of each shard of an ordered list; no size (or ≥ n_rows): one shard."""
    if not shard_size or shard_size >= n_rows:
        return [(0, n_rows)]
    return [(i, min(i + shard_size, n_rows)) for i in range(0, n_rows, shard_size)]


def make_batches(rows: list[dict], batch_size: int) -> list[list[dict]]:
    """Fixed-length (≤ 30 s) utterances in batches; longer ones alone (long-form decoding)."""
    short = [r for r in rows if r["n_frames"] <= NB_MAX_FRAMES]
    long = [r for r in rows if r["n_frames"] > NB_MAX_FRAMES]
    batches = [short[i:i + batch_size] for i in range(0, len(short), batch_size)]
    return batches + [[r] for r in long]


def _status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status in MiB (Linux), None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process since it started or since ``rss_peak_reset``
    (Linux: VmHWM; elsewhere getrusage's, which cannot be reset)."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float | None:
    """This process's resident set size now (Linux: VmRSS), None elsewhere."""
    return _status_mb("VmRSS")


def release_free_memory() -> bool:
    """Give the memory glibc's allocator holds free back to the system (``malloc_trim(0)``).

    Memory a program frees can stay resident (the batches' working set, a load's leftovers),
    so the resident set after the timed loop is read once it is given back. False where the C
    library is not glibc."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim(0)
    return True


def rss_peak_reset() -> bool:
    """Restart the peak-RSS mark at the current RSS (Linux ``clear_refs`` 5, kernel 4.0+);
    False where the kernel or a sandbox does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Transcriber:
    def __init__(self, model, tokenizer, device: str, decoding: dict):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.kwargs = generation_kwargs(model, decoding)
        self.dtype = model_input_dtype(model)
        self.pad = model.generation_config.pad_token_id
        self.fallback = fallback_options(decoding)

    def _sync(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def __call__(self, feats) -> tuple[list[str], dict]:
        """Transcribe a ``[B, n_mels, frames]`` batch; return texts and its timings."""
        import torch

        feats = feats.to(self.device, self.dtype)
        kwargs = dict(self.kwargs)
        timing = {"encoder": 0.0, "decoder": 0.0, "longform": 0.0}
        with torch.no_grad():
            self._sync()
            t0 = time.perf_counter()
            if feats.shape[-1] > NB_MAX_FRAMES:  # long-form: sequential 30 s windows
                kwargs["return_timestamps"] = True
                kwargs["attention_mask"] = torch.ones(feats.shape[0], feats.shape[-1],
                                                      dtype=torch.long, device=self.device)
                out = self.model.generate(feats, **kwargs)
                if not isinstance(out, torch.Tensor):
                    out = out["sequences"] if isinstance(out, dict) else out.sequences
                texts = self.tokenizer.batch_decode(out.cpu(), skip_special_tokens=True)
                tokens = int((out != self.pad).sum())
                self._sync()
                timing["longform"] = time.perf_counter() - t0
            else:
                encoded = self.model.model.encoder(feats)
                self._sync()
                t1 = time.perf_counter()
                texts, timing["temperatures"], tokens = with_fallback(
                    lambda idx, t: self._decode(feats, encoded, idx, t), len(feats), self.fallback)
                self._sync()
                t2 = time.perf_counter()
                timing["encoder"], timing["decoder"] = t1 - t0, t2 - t1
        timing["total"] = timing["encoder"] + timing["decoder"] + timing["longform"]
        timing["tokens"] = tokens
        return texts, timing

    def _decode(self, feats, encoded, idx: list[int], temperature: float):
        """One pass of ``with_fallback`` over the batch's utterances ``idx``."""
        import torch
        from transformers import LogitsProcessorList

        if len(idx) < len(feats):
            encoded = type(encoded)(last_hidden_state=encoded.last_hidden_state[idx])
        kwargs = dict(self.kwargs)
        if temperature > 0:  # Whisper's generate samples when given a temperature above 0
            drawn = feats[idx].float().cpu().numpy()
            torch.manual_seed(sampling_seed(self.fallback["seed"], drawn, temperature))
            kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        recorders = [LogprobRecorder()] if self.fallback is not None else []
        out = self.model.generate(encoder_outputs=encoded, **kwargs,
                                  logits_processor=LogitsProcessorList(recorders))
        texts = self.tokenizer.batch_decode(out.cpu(), skip_special_tokens=True)
        eos = self.model.generation_config.eos_token_id
        logprobs = recorders[0].averages(out[:, -recorders[0].steps:], eos) if recorders else None
        return texts, logprobs, int((out != self.pad).sum())


class LogprobRecorder:
    """A logits processor that keeps each step's log-probability of the token chosen, for
    openai-whisper's average log-probability: the sum over a sequence's tokens and its end
    token, over the token count + 1. generate() runs it after its suppressing processors
    and before the sampling warpers, so it reads the untempered distribution with the
    suppressed tokens masked, as openai-whisper does."""

    def __init__(self):
        self.last, self.picked, self.steps = None, [], 0

    def __call__(self, input_ids, scores):
        import torch

        if self.last is not None:  # the token chosen from the previous step's distribution
            self.picked.append(self.last.gather(1, input_ids[:, -1:])[:, 0])
        self.last, self.steps = torch.log_softmax(scores.float(), -1), self.steps + 1
        return scores

    def averages(self, generated, eos: int) -> list[float]:
        import torch

        picked = torch.stack([*self.picked, self.last.gather(1, generated[:, -1:])[:, 0]], 1)
        return average_logprobs(picked.cpu().numpy(), generated.cpu().numpy(), eos)


def make_transcriber(model, tokenizer, device: str, decoding: dict):
    """Transformers' Transcriber, or a runtime model's own (CTranslate2: quantizers.ct2)."""
    own = getattr(model, "transcriber", None)
    if own:
        return own(tokenizer, device, decoding)
    return Transcriber(model, tokenizer, device, decoding)


def memory_reset(device: str) -> dict:
    """Before the timed loop: the job's peak RSS so far (loading and warm-up), then the peak
    marks restarted, so that ``memory_stats`` also gives the timed loop's own peaks, apart
    from a load that may hold the fp32 model beside its quantized copy (torch.ao's does)."""
    so_far = peak_rss_mb()
    timed = rss_peak_reset()
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    return {"before_mb": so_far, "timed": timed}


def memory_stats(device: str, before: dict) -> dict:
    """Peak RSS of the whole job, of the timed loop alone (None where the mark could not be
    restarted), the resident set the loop leaves once free memory is given back (what the
    process holds between batches: libraries, model, a runtime's buffers; None where that
    cannot be given back or read), and torch's CUDA peaks in the timed loop."""
    peak = peak_rss_mb()
    mem = {"peak_rss_mb": max(peak, before["before_mb"]),
           "timed_peak_rss_mb": peak if before["timed"] else None,
           "resident_rss_mb": rss_mb() if release_free_memory() else None,
           "cuda_peak_allocated_mb": None, "cuda_peak_reserved_mb": None}
    if device == "cuda":
        import torch

        mem["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        mem["cuda_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    return mem


def progress_bar(batches, split: str, progress: bool):
    """The batches under a progress bar, unless ``progress`` is off. Left on, tqdm's own
    environment default (TQDM_DISABLE=1, as the GPU check sets) still turns it off: an
    explicit ``disable=False`` would override that."""
    from tqdm import tqdm

    return tqdm(batches, desc=f"transcribe {split}", unit="batch",
                **({} if progress else {"disable": True}))


def run(model, tokenizer, features_path, manifest_path, device, decoding, *, limit=None,
        exclude=(), split="", threads=None, timing=None, progress=True, shard=(0, 1),
        shard_size=None, sort=True):
    """Transcribe shard ``shard = (index, count)`` of a split (``shard_size`` utterances each)
    under the config's ``timing`` protocol (keys left out: the schema's defaults);
    return (hypothesis rows, timing dict): the measured fields of a ``records.ShardTiming``,
    which the transcribe step completes with what the checkpoint and process tell."""
    import torch

    protocol = with_defaults("timing", timing)
    regime, warmup_batches = protocol["regime"], protocol["warmup_batches"]
    if regime not in REGIMES:
        raise PipelineError(f"unknown timing regime {regime!r}; expected one of {REGIMES}")
    rows = ordered_rows(load_manifest(manifest_path), limit, exclude, split, sort)
    bounds = shard_bounds(len(rows), shard_size)
    index, count = shard
    if count != len(bounds) or not 0 <= index < count:
        raise PipelineError(
            f"split {split}: shard {index} of {count} asked, but {len(rows)} utterances in "
            f"shards of {shard_size or 'all'} make {len(bounds)} shard(s); re-plan with snakemake")
    start, stop = bounds[index]
    rows = rows[start:stop]
    cache = FeatureCache(features_path)
    batch_size = 1 if regime == "latency" else int(with_defaults("decoding", decoding)["batch_size"])
    batches = make_batches(rows, batch_size)
    transcriber = make_transcriber(model, tokenizer, device, decoding)

    def stack(batch):
        return torch.stack([cache.get(r["id"]) for r in batch])

    warmup = batches[:warmup_batches]
    # a smaller last batch is a shape the warm-up has not met: a torch.compile'd model would
    # compile it inside the timed loop (seen: torchao-int8dyn-compiled's 8 after 16)
    if warmup and len(batches[-1]) not in {len(b) for b in warmup}:
        warmup.append(batches[-1])
    for batch in warmup:
        transcriber(stack(batch))
    memory = memory_reset(device)
    fallback = fallback_options(decoding) is not None
    out_rows, parts = [], []
    for batch in progress_bar(batches, split, progress):
        texts, t = transcriber(stack(batch))
        parts.append(t)
        # with decoding.fallback: the temperature each text was kept at; None for a long-form
        # utterance, which a transcriber decodes greedily
        kept = t.get("temperatures") or [None] * len(texts)
        for r, text, temperature in zip(batch, texts, kept):
            out_rows.append({"id": r["id"], "speaker": r["speaker"], "duration": r["duration"],
                             "reference": r["reference"], "hypothesis": text,
                             **({"temperature": temperature} if fallback else {})})
    total = {k: sum(p[k] for p in parts) for k in ("encoder", "decoder", "longform", "total", "tokens")}
    audio = sum(r["duration"] for r in rows)
    timing = {
        "device": device,
        "regime": regime,
        "utterances": len(rows),
        "audio_seconds": audio,
        "compute_seconds": total["total"],
        "encoder_seconds": total["encoder"],
        "decoder_seconds": total["decoder"],
        "longform_seconds": total["longform"],
        "generated_tokens": total["tokens"],
        **rates(total["total"], audio, total["tokens"], total["decoder"]),
        "batches": len(batches),
        "batch_size": batch_size,
        "batch_seconds": [p["total"] for p in parts],
        "warmup_batches": min(warmup_batches, len(batches)),  # the protocol's, equal in every shard
        "threads": threads if threads is not None else torch.get_num_threads(),
        **memory_stats(device, memory),
        "shard": {"index": index, "count": count, "start": start, "stop": stop,
                  "size": shard_size or None},
        "sorted_by_length": sort,
        "order": [r["id"] for r in rows],  # the order transcribed (batches are cut from it)
    }
    if regime == "latency":
        timing.update(latency_stats(timing["batch_seconds"]))
    if fallback:
        timing["fallback_utterances"] = sum(bool(r.get("temperature")) for r in out_rows)
    return out_rows, timing


def rates(compute_seconds: float, audio_seconds: float, generated_tokens: int,
          decoder_seconds: float) -> dict:
    """RTF = compute / audio, RTFx = its inverse, tokens/s over decoder seconds: of one shard
    here, of the gathered shards in ``scoring.gather_shards``."""
    return {"tokens_per_second": (generated_tokens / decoder_seconds
                                  if decoder_seconds > 0 else None),
            "rtf": compute_seconds / audio_seconds,
            "rtfx": audio_seconds / compute_seconds if compute_seconds > 0 else None}


def latency_stats(seconds: list[float]) -> dict:
    """p50 / p90 of per-utterance latencies (batch 1: one batch per utterance)."""
    lat = sorted(seconds)
    return {"latency_p50_s": statistics.median(lat),
            "latency_p90_s": lat[min(len(lat) - 1, int(0.9 * len(lat)))]}
