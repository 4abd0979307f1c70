"""CTranslate2 (the engine behind faster-whisper): a runtime, not a PyTorch quantizer.

The scheme is CTranslate2's compute type (``float32``, ``int8``, ``int16``, ``float16``,
``int8_float16``, ``bfloat16``). ``quantize`` converts the in-memory fp32 model with
``ctranslate2.converters.TransformersConverter`` (weights quantized at conversion, so the
checkpoint's size is the deployed size); the checkpoint is the converted directory:
``model.bin`` (CTranslate2's own binary format, no pickle), ``config.json``,
``vocabulary.json`` and the model's ``tokenizer.json`` (faster-whisper reads it).

What CTranslate2 does to Whisper (4.8.5):

* q/k/v become one fused linear per attention block (k's missing bias stored as zeros);
* int8: every 2-D/3-D weight with a scale slot (all linears, both convs, the token embedding)
  is int8 with one float32 absmax scale per output row (symmetric); ``proj_out`` is tied to
  the embedding and stored once. Activations are quantized per row at run time (int8 GEMM).
  Only the positional encodings, layer norms and biases stay float.
* int16: one scale per weight tensor (2**10 / absmax), activations int16 at run time; CPU
  only, and only with CTranslate2's MKL backend (Intel CPUs). ``CT2_USE_MKL`` is never
  forced here: on AMD it made int8 and int16 about 2x slower than transformers fp32.

Support comes from ``ctranslate2.get_supported_compute_types(device)``. On a host where
CTranslate2 sees no CUDA device (a login node, a CPU workstation) the CUDA answer cannot be
asked, so the CUDA types CTranslate2 documents for compute capability >= 8 are assumed and
the GPU job asks again when it loads the model (a clear error if the GPU lacks the type).
Where it sees one, CUDA also needs cuBLAS 12: the PyPI wheels are CUDA 12 builds that load
``libcublas.so.12`` at their first matrix product (there is no CUDA 13 build,
OpenNMT/CTranslate2#1933), so a CUDA-13-only host gets unsupported rows saying so.

Transcription (``CT2Whisper.transcriber``) reads the same cached log-mel batches: ``encode``
is timed as the encoder, then ``generate`` on the encoder output (greedy, beam 1) as the
decoder. Threads: ``intra_threads`` = the job's threads, ``inter_threads`` = 1. CTranslate2
generates at most half its ``max_length`` (openai-whisper's 224-token ``sample_len``), so it
is asked for twice ``max_new_tokens``: a loop runs as long as in transformers (before, a
hypothesis stopped at 220 tokens where transformers went on to 440).
"""

from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path

from .. import PipelineError
from ..decode import fallback_options, forced_prompt, with_fallback
from ..features import NB_MAX_FRAMES, window_batch
from ..schema import with_defaults
from .base import Quantized, Quantizer, facts

TOKENIZER = "tokenizer.json"
# compute types CTranslate2 documents for CUDA (compute capability >= 8.0, e.g. A100/H100)
CUDA_TYPES = frozenset({"float32", "int8", "int8_float32", "float16", "int8_float16",
                        "bfloat16", "int8_bfloat16"})

# what CTranslate2's CUDA kernels load at run time (dlopen; see the module docstring)
CUDA_BLAS = "libcublas.so.12"

FLOAT_FRONT = ["embed_positions", "layer norms", "biases"]


def _facts(scheme: str) -> dict:
    int8_front = FLOAT_FRONT + ["(conv front-end and embed_tokens = tied proj_out: int8 too)"]
    table = {
        "float32": facts(weights="float32", activations="float32", granularity="none",
                         unquantized=["everything (no quantization)"]),
        "float16": facts(weights="float16", activations="float16", granularity="none",
                         unquantized=["everything (no quantization)"]),
        "bfloat16": facts(weights="bfloat16", activations="bfloat16", granularity="none",
                          unquantized=["everything (no quantization)"]),
        "int8": facts(weights="int8", activations="int8 (float32 outside matmuls)",
                      act_mode="dynamic", symmetric=True, granularity="per-channel",
                      unquantized=int8_front),
        "int8_float16": facts(weights="int8", activations="int8 (float16 outside matmuls)",
                              act_mode="dynamic", symmetric=True, granularity="per-channel",
                              unquantized=int8_front),
        "int16": facts(weights="int16", activations="int16", act_mode="dynamic",
                       symmetric=True, granularity="per-tensor",
                       unquantized=FLOAT_FRONT + ["(conv front-end and embed_tokens: int16 too)"]),
    }
    return table[scheme]


@functools.lru_cache(maxsize=None)
def supported_types(device: str) -> tuple[frozenset, str | None]:
    """(compute types CTranslate2 offers on ``device`` here, why it could not ask or None)."""
    try:
        import ctranslate2

        return frozenset(ctranslate2.get_supported_compute_types(device)), None
    except (ImportError, RuntimeError, ValueError) as e:  # no CUDA driver/device on this host
        return frozenset(), f"{type(e).__name__}: {e}"


@functools.lru_cache(maxsize=None)
def cuda_library_error() -> str | None:
    """Why CTranslate2's CUDA kernels cannot run in this process (cuBLAS 12 not loadable), or
    None. Asked as CTranslate2 asks: by library name, after torch (a CUDA 12 torch has then
    loaded its own cuBLAS 12, which CTranslate2 finds by that name)."""
    import ctypes

    import torch  # noqa: F401

    try:
        ctypes.CDLL(CUDA_BLAS)
    except OSError as e:
        return (f"CTranslate2 {_version()} is a CUDA 12 build: its CUDA kernels load {CUDA_BLAS}, "
                f"which cannot be loaded here ({e}); CUDA 13 has no CTranslate2 build "
                "(OpenNMT/CTranslate2#1933): a CUDA 12 torch or nvidia-cublas-cu12 on the "
                "library path")
    return None


def _version() -> str:
    from importlib import metadata

    return metadata.version("ctranslate2")


class CTranslate2(Quantizer):
    library = "ct2"
    package = "ctranslate2"
    schemes = {name: {} for name in ("float32", "int8", "int16", "float16", "int8_float16",
                                     "bfloat16")}

    def unsupported(self, entry, device):
        reason = super().unsupported(entry, device)
        if reason:
            return reason
        scheme = entry["scheme"]
        types, error = supported_types(device)
        if error is None:
            if device == "cuda" and cuda_library_error():
                return cuda_library_error()
            if scheme in types:
                return None
            why = (" (int16 needs CTranslate2's MKL backend, Intel CPUs; CT2_USE_MKL is never "
                   "forced here)" if scheme == "int16" and device == "cpu" else "")
            return (f"CTranslate2 {_version()} offers {', '.join(sorted(types))} on this {device}"
                    f", not {scheme}{why}")
        if device == "cuda":  # cannot ask on this host: CTranslate2's documented CUDA types
            return None if scheme in CUDA_TYPES else f"{scheme} is a CPU compute type of CTranslate2"
        return f"CTranslate2 cannot list its compute types on {device}: {error}"

    def describe(self, entry):
        return _facts(entry["scheme"])

    # -- model ----------------------------------------------------------------------------
    def quantize(self, model, entry, calibration=None):
        return Quantized(Converted(model, entry["scheme"]))

    def linear_bytes(self, model, names):
        return model.linear_bytes()

    def save(self, model, entry, out_dir):
        model.save(Path(out_dir))

    def load(self, ckpt_dir, model_dir, entry, device):
        import torch

        types, error = supported_types(device)
        if device == "cuda" and error is None and cuda_library_error():
            raise PipelineError(cuda_library_error())
        if entry["scheme"] not in types:
            raise PipelineError(
                f"CTranslate2 {_version()} cannot run compute type {entry['scheme']} on {device}"
                f" here: {error or 'it offers ' + ', '.join(sorted(types))}")
        return CT2Whisper(ckpt_dir, model_dir, device, entry["scheme"], torch.get_num_threads())


class Converted:
    """An fp32 model converted (in memory) to a CTranslate2 model specification."""

    def __init__(self, model, scheme: str):
        from ctranslate2.converters import TransformersConverter

        source = Path(model.name_or_path)  # the config and tokenizer come from its directory
        if not (source / TOKENIZER).is_file():
            raise PipelineError(f"CTranslate2 conversion needs {source / TOKENIZER}")

        class InMemory(TransformersConverter):
            def load_model(self, model_class, path, **kwargs):
                return model  # the model given to quantize(), not a fresh load

        converter = InMemory(str(source))
        self.spec = converter._load()  # the spec convert() would write, kept to size it
        self.spec.validate()
        self.spec.optimize(quantization=scheme)
        self.tokenizer = source / TOKENIZER

    def save(self, out_dir: Path) -> None:
        self.spec.save(str(out_dir))
        shutil.copy2(self.tokenizer, out_dir / TOKENIZER)

    def linear_bytes(self) -> int:
        """Bytes of what were nn.Linear layers: fused attention/FFN linears and the output
        projection (which aliases the embedding: counted, as the tied proj_out is for bnb)."""
        variables = self.spec.variables()
        total = 0
        for name, value in variables.items():
            if "/linear_" not in name and not name.startswith("decoder/projection/"):
                continue
            if isinstance(value, str):  # an alias of another variable (the tied head)
                value = variables[value]
            total += value.num_bytes()
        return total


class CT2Whisper:
    """A loaded CTranslate2 Whisper model, with what the transcription step needs."""

    def __init__(self, ckpt_dir, model_dir, device: str, compute_type: str, threads: int):
        import ctranslate2
        from transformers import GenerationConfig

        self.model = ctranslate2.models.Whisper(str(ckpt_dir), device=device,
                                                compute_type=compute_type,
                                                intra_threads=threads, inter_threads=1)
        self.generation_config = GenerationConfig.from_pretrained(model_dir)
        self.device = device
        # recorded in the timing JSON (transcribe.transcribe_checkpoint)
        self.runtime_info = {"runtime": "ctranslate2", "version": ctranslate2.__version__,
                             "compute_type": self.model.compute_type,
                             "intra_threads": threads, "inter_threads": 1}

    def prompt(self, decoding: dict) -> list[int]:
        return forced_prompt(self.generation_config, decoding)

    def transcriber(self, tokenizer, device: str, decoding: dict):
        if device != self.device:
            raise PipelineError(f"CTranslate2 model was loaded on {self.device}, not {device}")
        return CT2Transcriber(self, tokenizer, decoding)


class CT2Transcriber:
    """Same contract as decode.Transcriber: ``__call__(feats) -> (texts, timing)``."""

    def __init__(self, whisper: CT2Whisper, tokenizer, decoding: dict):
        self.model, self.tokenizer = whisper.model, tokenizer
        self.prompt = whisper.prompt(decoding)
        # CTranslate2 generates at most max_length / 2 tokens (openai-whisper's sample_len,
        # n_text_ctx // 2; OpenNMT/CTranslate2#1856): twice max_new_tokens lets it generate
        # as many as transformers does
        self.max_length = 2 * int(with_defaults("decoding", decoding)["max_new_tokens"])
        self.fallback = fallback_options(decoding)
        if self.fallback is not None:
            import ctranslate2

            # CTranslate2 seeds a worker thread's sampler at its first draw and ignores later
            # seeds (OpenNMT/CTranslate2#1757): seeded once, before any, a job's draws repeat
            # in a rerun, but depend on the passes before them in the job
            ctranslate2.set_random_seed(self.fallback["seed"])

    def _generate(self, features, temperature: float = 0.0):
        """Each row's text token ids, and with ``decoding.fallback`` its average
        log-probability (else None); greedy, or sampled at a temperature above 0."""
        sampling = {"sampling_temperature": temperature, "sampling_topk": 0} if temperature else {}
        results = self.model.generate(features, [self.prompt] * features.shape[0], beam_size=1,
                                      max_length=self.max_length,
                                      return_scores=self.fallback is not None, **sampling)
        ids = [r.sequences_ids[0] for r in results]
        if self.fallback is None:
            return ids, None
        # CTranslate2's score is the summed log-probability over the text token count
        # (faster-whisper's reading): openai-whisper's average divides it by that count + 1
        return ids, [r.scores[0] * len(i) / (len(i) + 1) for r, i in zip(results, ids)]

    def _pass(self, feats, encoded, idx: list[int], temperature: float):
        """One pass of ``decode.with_fallback`` over the batch's utterances ``idx`` (a subset
        is encoded again: CTranslate2 cannot index an encoder output on the device)."""
        import ctranslate2

        if len(idx) < len(feats):
            encoded = self.model.encode(ctranslate2.StorageView.from_array(feats[idx]),
                                        to_cpu=False)
        ids, logprobs = self._generate(encoded, temperature)
        return (self.tokenizer.batch_decode(ids, skip_special_tokens=True), logprobs,
                sum(len(i) for i in ids))

    def __call__(self, feats):
        import ctranslate2
        import numpy as np

        timing = {"encoder": 0.0, "decoder": 0.0, "longform": 0.0}
        feats = np.ascontiguousarray(feats.float().cpu().numpy())  # copied to the model's device
        t0 = time.perf_counter()
        if feats.shape[-1] > NB_MAX_FRAMES:  # alone; fixed 30 s windows (features.window_batch)
            windows = window_batch(feats[0])  # kept alive: a StorageView does not copy it
            ids = [sum(self._generate(ctranslate2.StorageView.from_array(windows))[0], [])]
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            tokens = len(ids[0])
            timing["longform"] = time.perf_counter() - t0
        else:
            encoded = self.model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=False)
            t1 = time.perf_counter()
            decode_pass = lambda idx, t: self._pass(feats, encoded, idx, t)  # noqa: E731
            texts, timing["temperatures"], tokens = with_fallback(decode_pass, len(feats),
                                                                  self.fallback)
            timing["encoder"], timing["decoder"] = t1 - t0, time.perf_counter() - t1
        timing["total"] = timing["encoder"] + timing["decoder"] + timing["longform"]
        # as transformers' count (its sequences hold neither the prompt nor the end token)
        timing["tokens"] = tokens
        return texts, timing


QUANTIZER = CTranslate2()
