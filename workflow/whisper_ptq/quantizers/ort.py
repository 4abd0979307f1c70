"""ONNX Runtime: Whisper exported to ONNX, quantized by ORT's own tools, run by its CPU
execution provider.

``quantize`` exports the in-memory fp32 model with ``torch.onnx.export`` (the dynamo
exporter) as two graphs, then applies the scheme with ONNX Runtime's quantization tools:

* ``encoder.onnx``: log-mel → the cross-attention keys and values of every decoder layer
  (computed once per utterance), one tensor each (``cross_key_<i>``, ``cross_value_<i>``);
* ``decoder.onnx``: one decoding step with a key/value cache (token ids, their positions, an
  additive causal mask, the past self-attention keys/values, the cross keys/values) → the
  next-token logits and the grown cache (``present_key_<i>``, ``present_value_<i>``). A
  tensor per layer, not one stacked tensor: slicing a layer out of a stack would copy it at
  every step, and the cross keys/values are the largest tensors of a decoding step. The
  output head multiplies by the token embedding (tied, stored once, as ``proj_out.weight``
  transposed): one initializer serves the head (MatMul) and the embedding lookup (Gather).

Schemes (ONNX Runtime 1.31):

* ``fp32``: the exported graphs as they are;
* ``int8-dynamic``: ``quantize_dynamic`` on every MatMul with a constant weight (all
  nn.Linear layers and the head): int8 symmetric weights, per tensor (ORT's default, as
  torch.ao's) or per output column (``granularity: per-channel``); activations uint8,
  quantized per tensor at run time (``DynamicQuantizeLinear`` → ``MatMulInteger``);
* ``int4``: ``MatMulNBitsQuantizer`` (round to nearest): 4-bit weights in blocks of
  ``group_size`` along the input dimension with a float32 scale (and a 4-bit zero point
  unless ``symmetric``); ``accuracy_level`` is the MatMulNBits attribute (0: float32
  compute; 4: int8 activations per block).

ORT quantizes the head's weight, not the embedding lookup that shares it: it would keep the
float32 copy for the lookup (and given the exporter's usual tied head, a Gemm beside a Gather
on one tensor, its int8 quantizer wrote a graph that fails to load). So after quantization
the lookup reads the head's quantized tensor (``tie_embedding``: int8 rows dequantized after
the Gather, int4 through ORT's ``GatherBlockQuantized``): the embedding is the dequantized
head, as in CTranslate2 and whisper.cpp, and the file holds it once. The conv front-end,
positional embeddings, layer norms and biases stay float32.

The pinned onnxruntime wheel is the CPU build (``onnxruntime-gpu`` is another package), so
CUDA is unsupported. Transcription (``OrtTranscriber``) decodes a batch of cached log-mels
greedily in a NumPy loop that reproduces transformers' ``generate`` (the same forced prompt,
``suppress_tokens`` at every step, ``begin_suppress_tokens`` at the first, at most
``max_new_tokens``; a finished row continues with end-of-text): fp32 gives transformers'
hypotheses. Threads: ``intra_op_num_threads`` = the job's threads, one inter-op thread.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from .. import PipelineError
from ..decode import (average_logprobs, fallback_options, forced_prompt, sampling_seed,
                      with_fallback)
from ..features import NB_MAX_FRAMES, window_batch
from ..schema import with_defaults
from .base import Quantized, Quantizer, facts

GRAPHS = ("encoder", "decoder")
HEAD = "proj_out.weight"  # the decoder's tied head / embedding initializer ([d_model, vocab])
MATMULS = ("MatMul", "MatMulInteger", "MatMulNBits")
# what ORT's quantizers name the tensors they make from a weight initializer W
SUFFIXES = ("_quantized", "_scale", "_zero_point", "_Q4", "_scales", "_zero_points")
MS = "com.microsoft"
TIED = "tied_embedding"  # the name of the node that gives the embedding rows (tie_embedding)
# what one encoder call may hold of a layer's attention weights (encode): the exported encoder
# computes every head's [frames, frames] weights at once, which at batch 16 more than doubled
# peak RSS (docs/results/base-mini/README.md, "ort/")
ENCODER_ATTENTION_BYTES = 256 * 2**20


def _facts(entry: dict) -> dict:
    scheme = entry["scheme"]
    front = ["conv front-end", "embed_positions", "layer norms", "biases"]
    tied = "(embed_tokens = tied proj_out: the head's quantized tensor)"
    if scheme == "fp32":
        return facts(weights="float32", granularity="none",
                     unquantized=["everything (no quantization)"])
    if scheme == "int8-dynamic":
        return facts(weights="int8", activations="uint8 (float32 outside matmuls)",
                     act_mode="dynamic", symmetric=True, granularity=entry["granularity"],
                     unquantized=front + [tied])
    compute = "int8 blocks (accuracy_level 4)" if entry["accuracy_level"] == 4 else "float32"
    return facts(weights="int4", activations=compute,
                 act_mode="dynamic" if entry["accuracy_level"] == 4 else "none",
                 symmetric=entry["symmetric"], granularity="per-group",
                 group_size=entry["group_size"], unquantized=front + [tied])


def _version() -> str:
    import onnxruntime

    return onnxruntime.__version__


class GraphRuntime(Quantizer):
    """A runtime of this module's exported graphs (ONNX Runtime, OpenVINO): its quantize step
    exports the model into a temporary directory (``converter``: ``Exported`` or the runtime's
    subclass of it) and saves by copying; CPU only, each option of one scheme."""

    devices = ("cpu",)
    scheme_options = True

    def converter(self):
        return Exported

    def quantize(self, model, entry, calibration=None):
        exported = self.converter()(model, entry)
        return Quantized(exported, exported.notes)

    def linear_bytes(self, model, names):
        return model.linear_bytes(names)

    def save(self, model, entry, out_dir):
        model.save(Path(out_dir))


class OnnxRuntime(GraphRuntime):
    library = "ort"
    package = "onnxruntime"
    schemes = {
        "fp32": {},
        "int8-dynamic": {"granularity": "per-tensor"},
        "int4": {"group_size": 32, "symmetric": True, "accuracy_level": 0},
    }
    options = {"granularity": ("per-tensor", "per-channel"),
               "group_size": (16, 32, 64, 128, 256), "symmetric": bool,
               "accuracy_level": (0, 4)}  # MatMulNBits: 0 float32, 4 int8 (CPU kernels)

    def unsupported(self, entry, device):
        if device == "cuda":
            return ("the pinned onnxruntime wheel is ONNX Runtime's CPU build (its CUDA "
                    "execution provider is the separate onnxruntime-gpu package)")
        return super().unsupported(entry, device)

    def describe(self, entry):
        return _facts(entry)

    def load(self, ckpt_dir, model_dir, entry, device):
        import torch

        return OrtWhisper(Path(ckpt_dir), model_dir, torch.get_num_threads())


# -- export ---------------------------------------------------------------------------------
def _check_config(c) -> None:
    """The decoder step below is written for Whisper's own layer (what every released
    checkpoint has); another variant would be exported wrongly, so it is refused."""
    if c.activation_function != "gelu" or getattr(c, "scale_embedding", False):
        raise PipelineError(
            f"the ONNX export supports Whisper's decoder layer (gelu, unscaled embedding); this "
            f"model has activation {c.activation_function!r}, scale_embedding "
            f"{getattr(c, 'scale_embedding', False)}")


def _modules(model):
    """The torch modules of the two graphs (defined here: torch is imported when used)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    c = model.config
    heads, head_dim = c.decoder_attention_heads, c.d_model // c.decoder_attention_heads

    def split(x):  # [B, T, D] -> [B, H, T, Dh]
        return x.view(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)

    def attend(q, k, v, mask=None):
        w = (q @ k.transpose(-1, -2)) * head_dim ** -0.5
        return (w if mask is None else w + mask).softmax(-1) @ v

    def merge(x):  # [B, H, T, Dh] -> [B, T, D]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], heads * head_dim)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model.model

        def forward(self, input_features):
            h = self.model.encoder(input_features).last_hidden_state
            return tuple(split(getattr(layer.encoder_attn, proj)(h))
                         for layer in self.model.decoder.layers for proj in ("k_proj", "v_proj"))

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(model.proj_out.weight.detach().t().contiguous())

    class DecoderStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.proj_out = model.model, Head()

        def forward(self, input_ids, positions, mask, *cache):
            # cache: each layer's past key and value, then each layer's cross key and value
            d, w = self.model.decoder, self.proj_out.weight
            past, cross = cache[:len(cache) // 2], cache[len(cache) // 2:]
            # the lookup as Gather(axis 1) + Transpose on the head's tensor (tie_embedding)
            rows = w.index_select(1, input_ids.reshape(-1)).t()
            x = rows.reshape(*input_ids.shape, -1) + d.embed_positions.weight[positions]
            present = []
            for i, layer in enumerate(d.layers):
                a = layer.self_attn
                h = layer.self_attn_layer_norm(x)
                k = torch.cat([past[2 * i], split(a.k_proj(h))], 2)
                v = torch.cat([past[2 * i + 1], split(a.v_proj(h))], 2)
                present += [k, v]
                x = x + a.out_proj(merge(attend(split(a.q_proj(h)), k, v, mask)))
                c = layer.encoder_attn
                h = layer.encoder_attn_layer_norm(x)
                x = x + c.out_proj(merge(attend(split(c.q_proj(h)), cross[2 * i],
                                                cross[2 * i + 1])))
                x = x + layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))
            return (d.layer_norm(x[:, -1]) @ w, *present)

    return Encoder().eval(), DecoderStep().eval()


def cache_names(prefix: str, layers: int) -> list[str]:
    """``<prefix>_key_<i>``, ``<prefix>_value_<i>`` for every decoder layer, in that order."""
    return [f"{prefix}_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def export(model, out_dir: Path) -> None:
    """The fp32 model as ``encoder.onnx`` and ``decoder.onnx`` (weights beside each, in
    ``<graph>.onnx.data``)."""
    import torch

    _check_config(model.config)
    c = model.config
    encoder, decoder = _modules(model)
    n = 2 * c.decoder_layers
    b, t, p = 2, 3, 2  # example sizes; every one is a dynamic dimension of the graphs
    heads, head_dim = c.decoder_attention_heads, c.d_model // c.decoder_attention_heads
    feats = torch.zeros(b, c.num_mel_bins, 2 * c.max_source_positions)
    step = (torch.zeros(b, t, dtype=torch.long), torch.arange(p, p + t), torch.zeros(t, p + t),
            # distinct tensors: the exporter would make one input of an aliased one
            *[torch.zeros(b, heads, p, head_dim) for _ in range(n)],
            *[torch.zeros(b, heads, c.max_source_positions, head_dim) for _ in range(n)])
    batch, new, past = "batch", "new", "past"  # named dynamic dimensions of the graphs
    with torch.no_grad():
        torch.onnx.export(encoder, (feats,), out_dir / "encoder.onnx", dynamo=True,
                          input_names=["input_features"],
                          output_names=cache_names("cross", c.decoder_layers),
                          dynamic_shapes=({0: batch},), external_data=True, verbose=False)
        torch.onnx.export(decoder, step, out_dir / "decoder.onnx", dynamo=True,
                          input_names=["input_ids", "positions", "mask",
                                       *cache_names("past", c.decoder_layers),
                                       *cache_names("cross", c.decoder_layers)],
                          output_names=["logits", *cache_names("present", c.decoder_layers)],
                          dynamic_shapes=({0: batch, 1: new}, {0: new}, {0: new, 1: "total"},
                                          ({0: batch, 2: past},) * n + ({0: batch},) * n),
                          external_data=True, verbose=False)


def load_proto(path: Path, data: bool = True):
    import onnx

    model = onnx.load(str(path), load_external_data=data)
    # the exporter's intermediate shapes: ORT's session and quantizer infer them again (the
    # quantizer stopped on one of them with an earlier layout of the tied head)
    del model.graph.value_info[:]
    return model


def save_proto(model, path: Path) -> None:
    import onnx

    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)


def quantize_graph(src: Path, dst: Path, entry: dict) -> None:
    """One exported graph through ORT's quantizer of the scheme (MatMul weights only)."""
    scheme = entry["scheme"]
    if scheme == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        raw = src.with_name("quantized-" + src.name)  # beside the export, not the checkpoint
        # ORT's defaults (no reduce_range: its docs advise it only for CPUs without VNNI,
        # where uint8 x int8 products can saturate; the CPU is in every row's provenance)
        quantize_dynamic(load_proto(src), raw, op_types_to_quantize=["MatMul"],
                         per_channel=entry["granularity"] == "per-channel",
                         weight_type=QuantType.QInt8, use_external_data_format=True)
        model = load_proto(raw)
    else:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer)

        config = DefaultWeightOnlyQuantConfig(
            block_size=entry["group_size"], is_symmetric=entry["symmetric"],
            accuracy_level=entry["accuracy_level"], op_types_to_quantize=("MatMul",))
        quantizer = MatMulNBitsQuantizer(load_proto(src), algo_config=config)
        quantizer.process()
        model = quantizer.model.model
    if src.stem == "decoder":
        tie_embedding(model, entry)
    save_proto(model, dst)


def tie_embedding(model, entry: dict) -> None:
    """Point the decoder's embedding lookup at the head's quantized tensor and drop the
    float32 one (module doc): the lookup (Gather on axis 1 of ``HEAD``, then a Transpose to
    [tokens, d_model]) becomes a dequantizing gather of the same rows."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    init = {t.name: t for t in g.initializer}
    found = [(n, m) for n in g.node if n.op_type == "Gather" and n.input[0] == HEAD
             for m in g.node if m.op_type == "Transpose" and n.output[0] in m.input]
    if len(found) != 1:
        raise PipelineError("the exported decoder lacks its one embedding lookup on the head "
                            f"(Gather on {HEAD}, then Transpose): the export changed")
    gather, transpose = found[0]
    ids, out = gather.input[1], transpose.output[0]  # token ids (flat) -> [tokens, d_model]

    def name(s):
        return f"{TIED}/{s}"

    if entry["scheme"] == "int8-dynamic":
        scale, zero = HEAD + "_scale", HEAD + "_zero_point"
        per_row = len(init[scale].dims) > 0 and init[scale].dims[0] > 1
        nodes = [helper.make_node("Gather", [HEAD + "_quantized", ids], [name("q")], axis=1),
                 helper.make_node("Transpose", [name("q")], [name("qt")], perm=[1, 0]),
                 helper.make_node("Cast", [name("qt")], [name("qf")], to=1)]
        for part in (scale, zero):
            src = part
            if per_row:  # one value per token: gathered, then broadcast over d_model
                nodes.append(helper.make_node("Gather", [part, ids], [name(part + "/g")]))
                nodes.append(helper.make_node("Unsqueeze", [name(part + "/g"), name("last")],
                                              [name(part + "/u")]))
                src = name(part + "/u")
            nodes.append(helper.make_node("Cast", [src], [name(part + "/f")], to=1))
        nodes += [helper.make_node("Sub", [name("qf"), name(zero + "/f")], [name("centred")]),
                  helper.make_node("Mul", [name("centred"), name(scale + "/f")], [out])]
        if per_row:
            g.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64),
                                                         name("last")))
    else:
        q4 = init[HEAD + "_Q4"]
        g.initializer.append(numpy_helper.from_array(
            np.array([q4.dims[0], q4.dims[1] * q4.dims[2]], dtype=np.int64), name("shape")))
        inputs = [name("packed"), ids, HEAD + "_scales"]
        if HEAD + "_zero_points" in init:
            inputs.append(HEAD + "_zero_points")
        nodes = [helper.make_node("Reshape", [HEAD + "_Q4", name("shape")], [name("packed")]),
                 helper.make_node("GatherBlockQuantized", inputs, [out], domain=MS,
                                  gather_axis=0, quantize_axis=1, bits=4,
                                  block_size=entry["group_size"])]
        if not any(o.domain == MS for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS, 1))
    nodes[-1].name = TIED
    at = list(g.node).index(gather)
    for node in (gather, transpose):
        g.node.remove(node)
    for node in reversed(nodes):
        g.node.insert(at, node)
    if not any(HEAD in n.input for n in g.node):
        g.initializer.remove(init[HEAD])


def initializer_bytes(tensor) -> int:
    """Bytes of an initializer's data (from its shape and type: external data not read)."""
    import math

    from onnx import helper

    return math.prod(tensor.dims) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def linear_initializer_bytes(model, linear: list[str]) -> int:
    """Bytes of a graph's nn.Linear layers: every constant weight of a MatMul (with what ORT's
    quantizer made from it: scales, zero points), the biases of the given linear names, and
    the head (which the embedding lookup shares)."""
    init = {t.name: t for t in model.graph.initializer}
    weights = {i for n in model.graph.node if n.op_type in MATMULS for i in n.input if i in init}
    bases = {next((w[:-len(s)] for s in SUFFIXES if w.endswith(s)), w) for w in weights}
    names = {b + s for b in bases for s in ("", *SUFFIXES)} | {f"{n}.bias" for n in linear}
    return sum(initializer_bytes(t) for n, t in init.items() if n in names)


class Exported:
    """An fp32 model exported (and quantized) into a temporary directory, saved by copying
    (a runtime that reads these graphs subclasses it with its own ``convert``)."""

    def __init__(self, model, entry: dict):
        self.tmp = tempfile.TemporaryDirectory(prefix="ort-")
        work, self.dir = Path(self.tmp.name) / "export", Path(self.tmp.name) / "model"
        work.mkdir()
        self.dir.mkdir()
        export(model, work)
        self.notes = self.convert(work, entry)
        shutil.rmtree(work)

    def convert(self, work: Path, entry: dict) -> tuple[str, ...]:
        """The exported graphs in ``work`` → the runtime's files in ``self.dir``; the notes
        of Quantized."""
        for graph in GRAPHS:
            src, dst = work / f"{graph}.onnx", self.dir / f"{graph}.onnx"
            if entry["scheme"] == "fp32":
                save_proto(load_proto(src), dst)
            else:
                quantize_graph(src, dst, entry)
        return ()

    def linear_bytes(self, names: list[str]) -> int:
        # names are transformers' ("model.encoder.layers.0.fc1"): the graphs keep bias names
        # under the wrappers' "model." too
        return sum(linear_initializer_bytes(load_proto(self.dir / f"{g}.onnx", data=False), names)
                   for g in GRAPHS)

    def save(self, out_dir: Path) -> None:
        for path in sorted(self.dir.iterdir()):
            shutil.copy2(path, out_dir / path.name)


# -- transcription --------------------------------------------------------------------------
def load_session(path: Path, threads: int):
    """An ONNX Runtime CPU session of one graph, as the transcription step runs it."""
    import onnxruntime as ort

    if not path.is_file():
        raise PipelineError(f"{path} is missing: the checkpoint is incomplete")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3  # errors only: the exporter's graphs warn on merge
    # memory patterns plan buffers for fixed shapes; the cache grows every step, and with
    # them peak RSS nearly doubled (docs/results/base-mini/README.md, "ort/")
    options.enable_mem_pattern = False
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT's own exception types (InvalidProtobuf, Fail, ...)
        raise PipelineError(f"{path} is not an ONNX model ONNX Runtime can load: "
                            f"{type(e).__name__}: {str(e).strip()[:300]}") from None


class OrtWhisper:
    """The two ONNX Runtime sessions of a checkpoint, with what the transcription step needs."""

    def __init__(self, ckpt_dir: Path, model_dir, threads: int):
        self.sessions = {graph: load_session(ckpt_dir / f"{graph}.onnx", threads)
                         for graph in GRAPHS}
        self.model_dir = model_dir
        self.runtime_info = {"runtime": "onnxruntime", "version": _version(),
                             "intra_op_num_threads": threads, "inter_op_num_threads": 1,
                             "providers": self.sessions["decoder"].get_providers()}

    def transcriber(self, tokenizer, device: str, decoding: dict):
        if device != "cpu":
            raise PipelineError(f"ONNX Runtime runs on cpu here, not {device}")
        return OrtTranscriber(self, tokenizer, decoding)


def encoder_rows(shape) -> int:
    """Utterances per encoder call: as many as keep a layer's float32 attention weights (heads
    × frames × frames each) within ENCODER_ATTENTION_BYTES, at least one (3 for base).
    ``shape`` is the encoder's first output's, a layer's cross keys [batch, heads, frames, dim]."""
    _, heads, frames, _ = shape
    return max(1, ENCODER_ATTENTION_BYTES // (4 * heads * frames ** 2))


def encode(session, feats, rows: int) -> dict:
    """The encoder session's outputs (by name) for a batch of log-mels, ``rows`` utterances
    per call (encode_chunks)."""
    return encode_chunks(lambda chunk: session.run(None, {"input_features": chunk}),
                         [o.name for o in session.get_outputs()], feats, rows)


def encode_chunks(run, names: list[str], feats, rows: int) -> dict:
    """An encoder graph's outputs (by name) for a batch of log-mels, ``rows`` utterances per
    call (``run(chunk)`` gives a call's outputs in ``names``' order), each call's written into
    its rows of the batch's arrays."""
    import numpy as np

    out = {}
    for i in range(0, len(feats), rows):
        for name, value in zip(names, run(feats[i:i + rows])):
            if name not in out:
                out[name] = np.empty((len(feats), *value.shape[1:]), value.dtype)
            out[name][i:i + len(value)] = value
    return out


class GraphTranscriber:
    """Greedy decoding over an encoder graph and a one-step decoder graph (this module's
    export), whatever runs them; same contract as decode.Transcriber: ``__call__(feats) ->
    (texts, timing)``. A runtime gives ``_encode(feats) -> {cross name: array}``,
    ``_start(cross, empty) -> step``, where ``step(tokens, positions, mask)`` runs one decoder
    step on the batch (keeping its own cache, which starts as ``empty``) and returns the
    next-token logits, and ``head_shape``: (heads, head_dim) of a layer's cache."""

    def __init__(self, model_dir, tokenizer, decoding: dict):
        import numpy as np
        from transformers import GenerationConfig

        g = GenerationConfig.from_pretrained(model_dir)
        self.tokenizer = tokenizer
        self.prompt = np.array(forced_prompt(g, decoding), dtype=np.int64)
        self.suppress = np.array(g.suppress_tokens or [], dtype=np.int64)
        self.begin_suppress = np.array(g.begin_suppress_tokens or [], dtype=np.int64)
        self.eos = g.eos_token_id
        self.max_new_tokens = int(with_defaults("decoding", decoding)["max_new_tokens"])
        self.fallback = fallback_options(decoding)

    def _encode(self, feats) -> dict:
        raise NotImplementedError

    def _start(self, cross: dict, empty):
        raise NotImplementedError

    def _generate(self, cross: dict, temperature: float = 0.0, seed: int | None = None):
        """Decoding of a batch from its cross keys/values: each row's text token ids, and with
        ``decoding.fallback`` each row's average log-probability (else None). Greedy, or at a
        temperature above 0 sampled (Gumbel-max) with a generator seeded by ``seed``."""
        import numpy as np

        batch = len(next(iter(cross.values())))
        # a layer's cache before the first step: [batch, heads, 0, head_dim]
        empty = np.zeros((batch, self.head_shape[0], 0, self.head_shape[1]), dtype=np.float32)
        step_logits = self._start(cross, empty)
        tokens = np.tile(self.prompt, (batch, 1))
        rng = np.random.default_rng(seed) if temperature > 0 else None
        done, steps, picked, seen = np.zeros(batch, dtype=bool), [], [], 0
        for step in range(self.max_new_tokens):
            n = tokens.shape[1]
            mask = np.triu(np.full((n, seen + n), -np.inf, dtype=np.float32), k=seen + 1)
            logits = step_logits(tokens, np.arange(seen, seen + n, dtype=np.int64), mask)
            seen += n
            logits[:, self.suppress] = -np.inf
            if step == 0:
                logits[:, self.begin_suppress] = -np.inf
            chosen = (logits.argmax(-1) if rng is None
                      else (logits / temperature + rng.gumbel(size=logits.shape)).argmax(-1))
            nxt = np.where(done, self.eos, chosen)
            if self.fallback is not None:  # the untempered log-probability of the token
                top = logits.max(-1)
                total = top + np.log(np.exp(logits - top[:, None]).sum(-1))
                picked.append(logits[np.arange(batch), nxt] - total)
            steps.append(nxt)
            done |= nxt == self.eos
            if done.all():
                break
            tokens = nxt[:, None].astype(np.int64)
        ids = np.stack(steps, 1)
        text_ids = [row[:int(np.argmax(row == self.eos)) if (row == self.eos).any() else len(row)]
                    .tolist() for row in ids]
        if self.fallback is None:
            return text_ids, None
        return text_ids, average_logprobs(np.stack(picked, 1), ids, self.eos)

    def _pass(self, feats, cross: dict, idx: list[int], temperature: float):
        """One pass of ``decode.with_fallback`` over the batch's utterances ``idx``."""
        if len(idx) < len(feats):
            cross = {k: v[idx] for k, v in cross.items()}
        seed = sampling_seed(self.fallback["seed"], feats[idx], temperature) if temperature else None
        ids, logprobs = self._generate(cross, temperature, seed)
        return (self.tokenizer.batch_decode(ids, skip_special_tokens=True), logprobs,
                sum(len(i) for i in ids))

    def __call__(self, feats):
        import numpy as np

        timing = {"encoder": 0.0, "decoder": 0.0, "longform": 0.0}
        feats = np.ascontiguousarray(feats.float().cpu().numpy())
        t0 = time.perf_counter()
        if feats.shape[-1] > NB_MAX_FRAMES:  # alone; its 30 s windows as one batch
            ids = [sum(self._generate(self._encode(window_batch(feats[0])))[0], [])]
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            tokens = len(ids[0])
            timing["longform"] = time.perf_counter() - t0
        else:
            cross = self._encode(feats)
            t1 = time.perf_counter()
            decode_pass = lambda idx, t: self._pass(feats, cross, idx, t)  # noqa: E731
            texts, timing["temperatures"], tokens = with_fallback(decode_pass, len(feats),
                                                                  self.fallback)
            timing["encoder"], timing["decoder"] = t1 - t0, time.perf_counter() - t1
        timing["total"] = timing["encoder"] + timing["decoder"] + timing["longform"]
        timing["tokens"] = tokens  # text tokens, as the other runtimes count
        return texts, timing


class OrtTranscriber(GraphTranscriber):
    """The two ONNX Runtime sessions, the cache passed in and out of every step."""

    def __init__(self, whisper: OrtWhisper, tokenizer, decoding: dict):
        super().__init__(whisper.model_dir, tokenizer, decoding)
        self.encoder, self.decoder = whisper.sessions["encoder"], whisper.sessions["decoder"]
        self.encoder_rows = encoder_rows(self.encoder.get_outputs()[0].shape)
        # the cache's names and per-row shape [heads, 0, head_dim], as the graphs declare them
        past = [i for i in self.decoder.get_inputs() if i.name.startswith("past_")]
        self.past = [i.name for i in past]
        self.head_shape = (past[0].shape[1], past[0].shape[3])

    def _encode(self, feats) -> dict:
        return encode(self.encoder, feats, self.encoder_rows)

    def _start(self, cross: dict, empty):
        past = dict.fromkeys(self.past, empty)

        def step(tokens, positions, mask):
            nonlocal past
            logits, *present = self.decoder.run(None, {
                "input_ids": tokens, "positions": positions, "mask": mask, **past, **cross})
            past = dict(zip(self.past, present))
            return logits

        return step


QUANTIZER = OnnxRuntime()
