"""whisper.cpp (ggml), through pywhispercpp: the runtime of on-device deployments.

The scheme is the ggml weight type of the model file (``f16``, ``q8_0``, ``q5_1``, ``q5_0``,
``q4_1``, ``q4_0``: the types whisper.cpp's ``quantize`` tool offers with 32-weight blocks).
``quantize`` writes what whisper.cpp's ``models/convert-h5-to-ggml.py`` and then its
``quantize`` tool would write, in one step from the in-memory fp32 model: the ggml file
(``ggml-model.bin``: hyperparameters, mel filters, byte-level vocabulary, then each tensor
under whisper.cpp's names). Blocks are quantized by ggml itself (``ggml_quantize_chunk`` of
the libggml that pywhispercpp bundles), so the file is the one the runtime reads back.

What whisper.cpp does to Whisper (1.8.5, pywhispercpp 1.5.1):

* every 2-D weight (all nn.Linear layers and the token embedding, which is also the output
  head: tied, stored once) has the scheme's type: blocks of 32 weights with one float16
  scale (``_0``: symmetric; ``_1``: a float16 minimum too); both convs float16; positional
  embeddings, layer norms and biases float32;
* at run time ggml quantizes the activations of a quantized matmul to 8-bit blocks of 32
  (q8_0 / q8_1); an f16 matmul takes them as float16;
* an all-float32 file is not offered: this build's CPU convolution (``im2col``) asserts
  float16 weights and aborts the process.

The PyPI wheel is a CPU build (ggml compiled for AVX2, no AVX-512), so CUDA is unsupported;
a source build for the host CPU may be faster than the numbers measured with it.

Transcription (``GgmlTranscriber``) hands each cached log-mel to ``whisper_set_mel`` and runs
``whisper_full`` greedy, one utterance at a time (whisper.cpp decodes one audio per call),
with what makes it the study's greedy decoding: no timestamps, no temperature fallback, no
no-speech skipping, non-speech tokens suppressed, the prompt of transformers' ``generate``,
at most ``max_new_tokens``. One difference stays: whisper.cpp ends a 30 s window's decoding
after n_text_ctx / 2 - 4 = 220 tokens, so a looping hypothesis stops there, not at 440.
The token ids are decoded by the pipeline's tokenizer. Encoder seconds run from handing
over the log-mel to the first decoding step (``whisper_full``'s logits-filter callback),
decoder seconds the rest. Threads: ``n_threads`` = the job's threads.
"""

from __future__ import annotations

import ctypes
import functools
import struct
import time
from pathlib import Path

from .. import PipelineError
from ..features import NB_MAX_FRAMES, whole_windows
from ..schema import with_defaults
from .base import Quantized, Quantizer, facts, linear_names

GGML_FILE = "ggml-model.bin"
MAGIC = 0x67676D6C  # "ggml"
BLOCK = 32
# ggml.h: enum ggml_type (a tensor's type) and enum ggml_ftype (the file's, in its header)
GGML_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8}
GGML_FTYPE = {"f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9}
QNT_FACTOR = 1000  # GGML_QNT_VERSION_FACTOR: a quantized file's ftype + version 2 x this
QNT_VERSION = 2 * QNT_FACTOR
# 2-D tensors whisper.cpp keeps float32 whatever the file type (its loader's types)
FLOAT32_2D = {"encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding",
              "decoder.positional_embedding"}
# transformers' parameter names -> whisper.cpp's (convert-h5-to-ggml.py's map)
LAYER_NAMES = {
    "self_attn.k_proj": "attn.key", "self_attn.q_proj": "attn.query",
    "self_attn.v_proj": "attn.value", "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln", "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.k_proj": "cross_attn.key", "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out", "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln",
}
TOP_NAMES = {
    "encoder.layer_norm": "encoder.ln_post", "decoder.layer_norm": "decoder.ln",
    "encoder.embed_positions.weight": "encoder.positional_embedding",
    "decoder.embed_positions.weight": "decoder.positional_embedding",
    "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
}
# the end-of-text id whisper.cpp assumes (English-only, multilingual vocabulary)
EOT = {51864: 50256, 51865: 50257, 51866: 50257}
HEADER_INTS = 12  # magic, 10 hyperparameters, ftype
BLOCK_NAMES = ["mlp_ln.weight", "mlp_ln.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
               "mlp.2.bias", "attn_ln.weight", "attn_ln.bias", "attn.query.weight",
               "attn.query.bias", "attn.key.weight", "attn.value.weight", "attn.value.bias",
               "attn.out.weight", "attn.out.bias"]


def loader_names(n_audio_layer: int, n_text_layer: int) -> set[str]:
    """The tensors whisper.cpp's loader asks for (src/whisper.cpp, whisper_model_load)."""
    names = {"encoder.positional_embedding", "encoder.conv1.weight", "encoder.conv1.bias",
             "encoder.conv2.weight", "encoder.conv2.bias", "encoder.ln_post.weight",
             "encoder.ln_post.bias", "decoder.positional_embedding",
             "decoder.token_embedding.weight", "decoder.ln.weight", "decoder.ln.bias"}
    cross = ["cross_" + n for n in BLOCK_NAMES if n.startswith("attn")]
    names |= {f"encoder.blocks.{i}.{n}" for i in range(n_audio_layer) for n in BLOCK_NAMES}
    names |= {f"decoder.blocks.{i}.{n}" for i in range(n_text_layer)
              for n in BLOCK_NAMES + cross}
    return names


def ggml_name(name: str) -> str | None:
    """whisper.cpp's name of a transformers Whisper parameter; None for the tied head."""
    if name == "proj_out.weight":
        return None
    parts = name.split(".")[1:]  # without "model."
    if parts[1] == "layers":  # encoder|decoder, layers, i, <layer part...>, weight|bias
        return ".".join([parts[0], "blocks", parts[2], LAYER_NAMES[".".join(parts[3:-1])],
                         parts[-1]])
    joined = ".".join(parts)
    for old, new in TOP_NAMES.items():
        if joined == old or joined.startswith(old + "."):
            return new + joined[len(old):]
    return joined


def _bundled(pattern: str) -> Path:
    """A shared library pywhispercpp's wheel bundles (auditwheel's pywhispercpp.libs)."""
    import pywhispercpp

    found = sorted((Path(pywhispercpp.__file__).parent.parent / "pywhispercpp.libs").glob(pattern))
    if not found:
        raise PipelineError(f"pywhispercpp's wheel lacks {pattern} (pywhispercpp.libs)")
    return found[0]


@functools.lru_cache(maxsize=None)
def _ggml():
    """libggml-base, as loaded by pywhispercpp, with the quantization entry points typed
    (once per process: every 2-D tensor of a conversion asks for it)."""
    import _pywhispercpp  # noqa: F401  (loads the bundled libraries first)

    lib = ctypes.CDLL(str(_bundled("libggml-base-*.so*")))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


def quantize_rows(weight, scheme: str) -> bytes:
    """A [rows, n] float matrix as ggml's blocks of ``scheme`` (row-major, as ggml stores it)."""
    import numpy as np

    data = np.ascontiguousarray(weight, dtype=np.float32)
    if scheme == "f16":
        return data.astype(np.float16).tobytes()
    rows, n = data.shape
    if n % BLOCK:
        raise PipelineError(f"whisper.cpp {scheme}: rows of {n} weights do not split into "
                            f"blocks of {BLOCK}")
    lib, kind = _ggml(), GGML_TYPE[scheme]
    out = ctypes.create_string_buffer(lib.ggml_row_size(kind, n) * rows)
    size = lib.ggml_quantize_chunk(kind, data.ctypes.data, out, 0, rows, n, None)
    return out.raw[:size]


def check_file(path: Path) -> None:
    """A clear error for a ggml file whisper.cpp would not load: this build's Python binding
    cannot tell a failed load from a loaded model, and then crashes the process."""
    import numpy as np

    lib = _ggml()
    kinds = set(GGML_TYPE.values())
    try:
        with open(path, "rb") as f:
            header = struct.unpack(f"<{HEADER_INTS}i", f.read(4 * HEADER_INTS))
            if header[0] != MAGIC or header[-1] % QNT_FACTOR not in GGML_FTYPE.values():
                raise ValueError(f"not a whisper.cpp ggml file (magic {header[0]:#x}, ftype "
                                 f"{header[-1]})")
            n_mels, n_freq = struct.unpack("<2i", f.read(8))
            f.seek(4 * n_mels * n_freq, 1)
            for _ in range(struct.unpack("<i", f.read(4))[0]):
                f.seek(struct.unpack("<i", f.read(4))[0], 1)
            seen, size = set(), path.stat().st_size
            while f.tell() < size:
                n_dims, length, kind = struct.unpack("<3i", f.read(12))
                shape = struct.unpack(f"<{n_dims}i", f.read(4 * n_dims))
                name = f.read(length).decode()
                if kind not in kinds:
                    raise ValueError(f"tensor {name!r} has ggml type {kind}")
                f.seek(lib.ggml_row_size(kind, shape[0]) * int(np.prod(shape[1:])), 1)
                seen.add(name)
            if f.tell() != size:
                raise ValueError(f"the last tensor ({name!r}) is cut off")
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        raise PipelineError(f"{path} is not a complete whisper.cpp model file: "
                            f"{e if isinstance(e, ValueError) else 'truncated'}") from None
    wanted = loader_names(header[5], header[9])
    if seen != wanted:
        why = [f"{label} {sorted(names)[:3]}" for label, names in
               (("lacks", wanted - seen), ("has tensors it does not know:", seen - wanted))
               if names]
        raise PipelineError(f"{path} is not a whisper.cpp model file it can load: {'; '.join(why)}")


def whisper_cpp_version() -> str:
    """The bundled libwhisper's version (its file name: libwhisper-<hash>.so.<version>)."""
    return _bundled("libwhisper-*.so*").name.split(".so.")[-1]


def _version() -> str:
    from importlib import metadata

    return f"pywhispercpp {metadata.version('pywhispercpp')}, whisper.cpp {whisper_cpp_version()}"


class WhisperCpp(Quantizer):
    library = "whispercpp"
    package = "pywhispercpp"
    schemes = {name: {} for name in GGML_FTYPE}
    devices = ("cpu",)
    # whisper.cpp decodes inside whisper_full; its own fallback tests token entropy, not
    # openai-whisper's compression ratio, so the rows would not be the same rule's
    supports_fallback = False

    def unsupported(self, entry, device):
        if device == "cuda":
            return "pywhispercpp's PyPI wheel is a CPU build of whisper.cpp (no CUDA backend)"
        return super().unsupported(entry, device)

    def describe(self, entry):
        scheme = entry["scheme"]
        front = ["conv front-end (float16)", "embed_positions", "layer norms", "biases"]
        if scheme == "f16":
            return facts(weights="float16", activations="float16 (float32 outside matmuls)",
                         granularity="none", unquantized=front)
        bits = scheme[1]
        return facts(weights=f"int{bits}", activations="int8 blocks of 32 (q8_0/q8_1)",
                     act_mode="dynamic", symmetric=scheme.endswith("_0"),
                     granularity="per-group", group_size=BLOCK,
                     unquantized=front + ["(embed_tokens = tied proj_out: quantized too)"])

    # -- model ----------------------------------------------------------------------------
    def quantize(self, model, entry, calibration=None):
        return Quantized(GgmlFile(model, entry["scheme"]))

    def linear_bytes(self, model, names):
        return model.linear_bytes

    def save(self, model, entry, out_dir):
        model.save(Path(out_dir) / GGML_FILE)

    def load(self, ckpt_dir, model_dir, entry, device):
        import torch

        return GgmlWhisper(Path(ckpt_dir) / GGML_FILE, model_dir, torch.get_num_threads())


class GgmlFile:
    """An fp32 transformers Whisper as the bytes of a whisper.cpp model file of one scheme."""

    def __init__(self, model, scheme: str):
        import numpy as np
        from transformers import AutoTokenizer, WhisperFeatureExtractor
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        c, source = model.config, model.name_or_path
        eot = EOT.get(c.vocab_size)
        if eot is None or c.eos_token_id != eot:
            raise PipelineError(
                f"whisper.cpp needs Whisper's own vocabulary (51864 tokens, end-of-text 50256, "
                f"or 51865/51866 and 50257): its special-token ids are fixed; this model has "
                f"{c.vocab_size} tokens, end-of-text {c.eos_token_id}")
        if not c.encoder_ffn_dim == c.decoder_ffn_dim == 4 * c.d_model:
            raise PipelineError(
                f"whisper.cpp fixes the feed-forward width at 4 x d_model = {4 * c.d_model}; this "
                f"model has {c.encoder_ffn_dim} (encoder) and {c.decoder_ffn_dim} (decoder)")
        header = [MAGIC, c.vocab_size, c.max_source_positions, c.d_model,
                  c.encoder_attention_heads, c.encoder_layers, c.max_target_positions, c.d_model,
                  c.decoder_attention_heads, c.decoder_layers, c.num_mel_bins,
                  GGML_FTYPE[scheme] + (QNT_VERSION if scheme != "f16" else 0)]
        chunks = [struct.pack(f"<{len(header)}i", *header)]
        # transformers' filters [n_freq, n_mels] equal the openai mel_filters.npz the
        # converter copies (librosa's slaney filters); whisper.cpp uses them only on PCM input
        filters = np.asarray(WhisperFeatureExtractor.from_pretrained(source).mel_filters,
                             dtype=np.float32).T
        chunks += [struct.pack("<2i", *filters.shape), np.ascontiguousarray(filters).tobytes()]
        # the byte-level tokens below end-of-text (whisper.cpp adds the special ones itself).
        # An id the tokenizer lacks gets a placeholder: whisper.cpp drops a segment whose text
        # is empty, and the pipeline decodes the ids with its own tokenizer anyway
        vocab = AutoTokenizer.from_pretrained(source).get_vocab()
        by_id = {i: token for token, i in vocab.items() if i < eot}
        byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
        chunks.append(struct.pack("<i", eot))
        for i in range(eot):
            text = (bytes(byte_of[ch] for ch in by_id[i]) if i in by_id
                    else f"[_unknown_{i}_]".encode())
            chunks += [struct.pack("<i", len(text)), text]
        self.linear_bytes = 0
        linear = {f"{n}.{p}" for n in linear_names(model) for p in ("weight", "bias")}
        for name, tensor in model.state_dict().items():
            target = ggml_name(name)
            if target is None:  # proj_out: whisper.cpp's head is the token embedding
                continue
            data = tensor.detach().float().numpy()
            if target in ("encoder.conv1.bias", "encoder.conv2.bias"):
                data = data.reshape(-1, 1)
            if data.ndim == 2 and target not in FLOAT32_2D:
                kind, blob = scheme, quantize_rows(data, scheme)
            elif data.ndim == 3:
                kind, blob = "f16", data.astype(np.float16).tobytes()
            else:
                kind, blob = "f32", np.ascontiguousarray(data, dtype=np.float32).tobytes()
            encoded = target.encode()
            chunks += [struct.pack("<3i", data.ndim, len(encoded), GGML_TYPE[kind]),
                       struct.pack(f"<{data.ndim}i", *reversed(data.shape)), encoded, blob]
            if name in linear or target == "decoder.token_embedding.weight":  # = tied head
                self.linear_bytes += len(blob)
        self.chunks = chunks

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            f.writelines(self.chunks)


class GgmlWhisper:
    """A whisper.cpp context on a ggml file, with what the transcription step needs."""

    def __init__(self, path: Path, model_dir, threads: int):
        import _pywhispercpp as pw
        from transformers import GenerationConfig

        check_file(path)
        params = pw.whisper_context_default_params()
        params.use_gpu = False
        self.ctx = pw.whisper_init_from_file_with_params(str(path), params)
        self.generation_config = GenerationConfig.from_pretrained(model_dir)
        self.threads = threads
        self.runtime_info = {"runtime": "whisper.cpp", "version": _version(),
                             "n_threads": threads, "flash_attn": bool(params.flash_attn),
                             "system_info": pw.whisper_print_system_info().strip()}

    def transcriber(self, tokenizer, device: str, decoding: dict):
        if device != "cpu":
            raise PipelineError(f"whisper.cpp runs on cpu here, not {device}")
        return GgmlTranscriber(self, tokenizer, decoding)


class GgmlTranscriber:
    """Same contract as decode.Transcriber: ``__call__(feats) -> (texts, timing)``."""

    def __init__(self, whisper: GgmlWhisper, tokenizer, decoding: dict):
        import _pywhispercpp as pw

        self.pw, self.ctx, self.tokenizer = pw, whisper.ctx, tokenizer
        p = pw.whisper_full_default_params(pw.whisper_sampling_strategy.WHISPER_SAMPLING_GREEDY)
        p.n_threads = whisper.threads
        p.no_timestamps = p.single_segment = p.no_context = True
        p.print_progress = p.print_realtime = p.print_timestamps = p.print_special = False
        p.temperature, p.temperature_inc = 0.0, 0.0  # greedy, no fallback
        p.no_speech_thold = 2.0  # a probability never exceeds it: no segment is dropped
        p.suppress_blank = p.suppress_nst = True  # transformers' begin / non-speech suppression
        # whisper.cpp ends a segment after the token at index max_tokens (one more than asked)
        self.max_new_tokens = int(with_defaults("decoding", decoding)["max_new_tokens"])
        p.max_tokens = max(1, self.max_new_tokens - 1)
        if getattr(whisper.generation_config, "is_multilingual", False):
            p.language = decoding.get("language", "en")
            p.translate = decoding.get("task", "transcribe") == "translate"
        self.first_step: float | None = None
        pw.assign_logits_filter_callback(p, self._decoding_step)
        self.params = p
        self.eot = pw.whisper_token_eot(self.ctx)

    def _decoding_step(self, *_):
        if self.first_step is None:
            self.first_step = time.perf_counter()

    def _one(self, mel) -> list[int]:
        """The text tokens of one log-mel: each 30 s window's (a segment) up to the limit."""
        import numpy as np

        pw, ctx = self.pw, self.ctx
        if pw.whisper_set_mel(ctx, np.ascontiguousarray(mel).reshape(-1), mel.shape[1],
                              mel.shape[0]) != 0:
            raise PipelineError("whisper.cpp refused the log-mel (whisper_set_mel)")
        if pw.whisper_full(ctx, self.params, np.zeros(0, dtype=np.float32), 0) != 0:
            raise PipelineError("whisper.cpp failed to transcribe an utterance (whisper_full)")
        ids = []
        for s in range(pw.whisper_full_n_segments(ctx)):
            tokens = (pw.whisper_full_get_token_id(ctx, s, i)
                      for i in range(pw.whisper_full_n_tokens(ctx, s)))
            ids += [i for i in tokens if i < self.eot][:self.max_new_tokens]
        return ids

    def __call__(self, feats):
        timing = {"encoder": 0.0, "decoder": 0.0, "longform": 0.0}
        feats = feats.float().cpu().numpy()
        ids = []
        for mel in feats:
            self.first_step = None
            t0 = time.perf_counter()
            if mel.shape[-1] > NB_MAX_FRAMES:  # whisper.cpp decodes each window in turn
                ids.append(self._one(whole_windows(mel)))
                timing["longform"] += time.perf_counter() - t0
                continue
            ids.append(self._one(mel))
            t2 = time.perf_counter()
            t1 = self.first_step or t2  # no step: nothing was decoded
            timing["encoder"] += t1 - t0
            timing["decoder"] += t2 - t1
        timing["total"] = timing["encoder"] + timing["decoder"] + timing["longform"]
        timing["tokens"] = sum(len(i) for i in ids)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True), timing


QUANTIZER = WhisperCpp()
