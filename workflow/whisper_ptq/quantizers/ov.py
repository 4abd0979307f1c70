"""OpenVINO: the ONNX Runtime module's exported graphs, read by OpenVINO, weights compressed
by NNCF, run by OpenVINO's CPU plugin.

``quantize`` exports the fp32 model as ``ort.export`` does (the same two graphs: encoder →
cross keys/values; one decoder step with a key/value cache), reads them with OpenVINO's ONNX
front-end, and saves them as OpenVINO IR (``encoder.xml`` / ``.bin``, ``decoder.xml`` /
``.bin``; float32 constants kept, not OpenVINO's default fp16). The decoder is made stateful
(``apply_make_stateful_transformation``: each ``past_*`` input and its ``present_*`` output
become one state), so the cache stays inside the plugin between steps instead of being copied
in and out of every call; with the cache as inputs its decoder was several times slower.

Schemes (NNCF 3.4 ``compress_weights``, weights only: no calibration data):

* ``fp32``: the graphs as read;
* ``int8``: every constant weight of a MatMul, a convolution or the embedding lookup in 8 bits
  per output channel, asymmetric (NNCF's default, ``INT8_ASYM``) unless ``symmetric``;
* ``int4``: 4-bit blocks of ``group_size`` along the input, symmetric unless ``symmetric:
  false`` (``ratio`` 1.0: every layer NNCF would make 4-bit). NNCF keeps the embedding (here
  the tied head) and what it counts as first and last layers in its backup precision,
  ``INT8_ASYM``; the quantize step records which (``notes``).

NNCF stores the scales in float16. The head and the embedding lookup are one constant in
the export (``ort``'s tied head), compressed once. Position embeddings, layer norms and
biases stay float32.

Run time: OpenVINO's CPU plugin with ``INFERENCE_PRECISION_HINT`` f32 (on a CPU with bf16
support it would otherwise compute in bf16), ``INFERENCE_NUM_THREADS`` = the job's threads,
one stream, and ``DYNAMIC_QUANTIZATION_GROUP_SIZE`` from the entry (OpenVINO's CPU default,
32: the plugin may quantize a compressed-weight matmul's activations to int8 per group of
that many at run time, as its kernel for the call's shape decides; 0 turns it off). The attention is the export's MatMul–Softmax–MatMul, which the
plugin does not fuse into its own attention kernel, so its KV-cache compression does not
apply. Decoding is ``ort``'s greedy loop (``GraphTranscriber``); the encoder runs in ``ort``'s
chunks. OpenVINO's GPU plugin is for Intel GPUs: CUDA is unsupported.
"""

from __future__ import annotations

import math
from pathlib import Path

from .. import PipelineError
from . import ort
from .base import facts

FILES = tuple(f"{graph}.{ext}" for graph in ort.GRAPHS for ext in ("xml", "bin"))
# ops between a compressed weight constant and its MatMul (NNCF's decompression subgraph)
DECOMPRESSION = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze")


def _facts(entry: dict) -> dict:
    scheme = entry["scheme"]
    if scheme == "fp32":
        return facts(weights="float32", granularity="none",
                     unquantized=["everything (no quantization)"])
    group = entry["dynamic_quantization_group_size"]
    # the plugin picks its kernel per call; that it quantizes every call is not known
    activations = (f"int8 dynamic per group of {group} in the matmuls where the plugin "
                   "applies it (float32 elsewhere)" if group else "float32")
    kept = ["embed_positions", "layer norms", "biases"]
    if scheme == "int4":
        kept.append("embed_tokens = tied proj_out, convs and NNCF's first/last layers: "
                    "int8 asym. (NNCF's backup precision; quant.json notes)")
    return facts(weights=scheme, activations=activations, act_mode="dynamic" if group else "none",
                 symmetric=entry["symmetric"],
                 granularity="per-channel" if scheme == "int8" else "per-group",
                 group_size=entry.get("group_size"), unquantized=kept)


def _version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


class OpenVino(ort.GraphRuntime):
    library = "openvino"
    package = "openvino"
    schemes = {
        "fp32": {},
        "int8": {"symmetric": False, "dynamic_quantization_group_size": 32},
        "int4": {"group_size": 128, "symmetric": True, "dynamic_quantization_group_size": 32},
    }
    options = {"symmetric": bool, "group_size": (32, 64, 128),
               "dynamic_quantization_group_size": (0, 16, 32, 64, 128)}

    def unsupported(self, entry, device):
        if device == "cuda":
            return "OpenVINO's GPU plugin runs Intel GPUs; it has no CUDA device"
        return super().unsupported(entry, device)

    def describe(self, entry):
        return _facts(entry)

    def converter(self):
        return Converted

    def load(self, ckpt_dir, model_dir, entry, device):
        import torch

        return OvWhisper(Path(ckpt_dir), model_dir, entry, torch.get_num_threads())


# -- conversion -----------------------------------------------------------------------------
def compress(model, entry: dict):
    """An OpenVINO model with its weights compressed by NNCF as the scheme says."""
    import nncf

    sym = "SYM" if entry["symmetric"] else "ASYM"
    if entry["scheme"] == "int8":
        return nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, f"INT8_{sym}"))
    try:
        return nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, f"INT4_{sym}"),
                                     group_size=entry["group_size"], ratio=1.0)
    except nncf.errors.InvalidGroupSizeError as e:  # its message lists every layer
        raise PipelineError(f"group_size {entry['group_size']} does not divide this model's "
                            f"layer widths (NNCF: {str(e).splitlines()[0]})") from None


def weight_constants(model):
    """{MatMul / Convolution / Gather op: the constants its weight is made of} (a weight is
    a constant input, or NNCF's decompression of a compressed one; shape constants aside)."""
    weights = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("MatMul", "Convolution", "Gather"):
            continue
        todo, found = [op.input_value(0 if kind == "Gather" else 1).get_node()], []
        while todo:
            node = todo.pop()
            if node.get_type_name() == "Constant":
                t = node.get_element_type()
                if t.is_real() or t.bitwidth <= 8:  # not a Reshape's int64 shape
                    found.append(node)
            elif node.get_type_name() in DECOMPRESSION:
                todo += [i.get_node() for i in node.input_values()]
        if found:
            weights[op] = found
    return weights


def constant_bytes(node) -> int:
    return math.ceil(math.prod(node.get_output_shape(0)) * node.get_element_type().bitwidth / 8)


def linear_constant_bytes(model) -> int:
    """Bytes of a graph's nn.Linear layers: every constant a MatMul's weight is made of, and
    the constant added to its output (the bias); each constant once (the head is also the
    embedding lookup's)."""
    found = {}
    for op, constants in weight_constants(model).items():
        if op.get_type_name() != "MatMul":
            continue
        found.update((c.get_friendly_name(), c) for c in constants)
        for target in op.output(0).get_target_inputs():
            add = target.get_node()
            if add.get_type_name() == "Add":
                found.update((i.get_node().get_friendly_name(), i.get_node())
                             for i in add.input_values()
                             if i.get_node().get_type_name() == "Constant")
    return sum(map(constant_bytes, found.values()))


def precision_notes(models: dict, scheme: str) -> tuple[str, ...]:
    """The weights NNCF left at another precision than the scheme's, named (quant.json)."""
    bits = 4 if scheme == "int4" else 8
    other = {}  # "graph: constant (bits)" -> the ops that read it
    for graph, model in models.items():
        for op, constants in weight_constants(model).items():
            widths = {c.get_element_type().bitwidth for c in constants
                      if not c.get_element_type().is_real()}
            if widths and bits not in widths:
                name = max(constants, key=constant_bytes).get_friendly_name()
                other.setdefault(f"{graph}: {name} in {min(widths)} bits", []).append(
                    op.get_type_name())
    if not other:
        return ()
    return (f"{len(other)} weights in NNCF's backup precision: "
            + "; ".join(f"{k} ({', '.join(v)})" for k, v in other.items()),)


class Converted(ort.Exported):
    """The exported graphs as OpenVINO IR (compressed, decoder stateful)."""

    def convert(self, work: Path, entry: dict) -> tuple[str, ...]:
        import openvino as ov
        from openvino._offline_transformations import apply_make_stateful_transformation

        core, models = ov.Core(), {}
        for graph in ort.GRAPHS:
            model = core.read_model(work / f"{graph}.onnx")
            if entry["scheme"] != "fp32":
                model = compress(model, entry)
            if graph == "decoder":
                apply_make_stateful_transformation(model, {
                    i.get_any_name(): i.get_any_name().replace("past_", "present_", 1)
                    for i in model.inputs if i.get_any_name().startswith("past_")})
            ov.save_model(model, self.dir / f"{graph}.xml", compress_to_fp16=False)
            models[graph] = model
        self.linear = sum(map(linear_constant_bytes, models.values()))
        return () if entry["scheme"] == "fp32" else precision_notes(models, entry["scheme"])

    def linear_bytes(self, names: list[str]) -> int:
        return self.linear  # counted from the converted graphs (the names: every MatMul's)


# -- transcription --------------------------------------------------------------------------
def compile_graph(core, path: Path, config: dict):
    """A graph of the checkpoint compiled for OpenVINO's CPU plugin."""
    for part in (path, path.with_suffix(".bin")):
        if not part.is_file():
            raise PipelineError(f"{part} is missing: the checkpoint is incomplete")
    try:
        return core.compile_model(core.read_model(path), "CPU", config)
    except RuntimeError as e:  # OpenVINO's reader / plugin errors
        raise PipelineError(f"{path} is not an OpenVINO model OpenVINO can load: "
                            f"{str(e).strip()[:300]}") from None


def _text(value) -> str:
    """A property as the plugin reports it, as text (a Type by its name: "f32")."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


class OvWhisper:
    """The two compiled graphs of a checkpoint, with what the transcription step needs."""

    def __init__(self, ckpt_dir: Path, model_dir, entry: dict, threads: int):
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
                  "NUM_STREAMS": 1}
        if "dynamic_quantization_group_size" in entry:
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = entry["dynamic_quantization_group_size"]
        core = ov.Core()
        self.compiled = {graph: compile_graph(core, ckpt_dir / f"{graph}.xml", config)
                         for graph in ort.GRAPHS}
        self.model_dir = model_dir
        decoder = self.compiled["decoder"]
        self.runtime_info = {"runtime": "openvino", "version": _version(), **{
            key.lower(): _text(decoder.get_property(key))
            for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS",
                        "DYNAMIC_QUANTIZATION_GROUP_SIZE")}}

    def transcriber(self, tokenizer, device: str, decoding: dict):
        if device != "cpu":
            raise PipelineError(f"OpenVINO runs on cpu here, not {device}")
        return OvTranscriber(self, tokenizer, decoding)


class OvTranscriber(ort.GraphTranscriber):
    """The compiled graphs; the decoder's cache lives in the states of a request made per
    batch, which is dropped after the batch: it reads the batch's cross keys and values
    where they are (shared, not copied), and kept, it would hold them while the next batch's
    are computed (0.6 GB for base at batch 16)."""

    def __init__(self, whisper: OvWhisper, tokenizer, decoding: dict):
        super().__init__(whisper.model_dir, tokenizer, decoding)
        encoder, self.decoder = whisper.compiled["encoder"], whisper.compiled["decoder"]
        self.encoder, self.request = encoder.create_infer_request(), None
        self.names = [o.get_any_name() for o in encoder.outputs]
        shape = [d.get_length() if d.is_static else None
                 for d in encoder.outputs[0].get_partial_shape()]
        self.encoder_rows = ort.encoder_rows(shape)
        self.head_shape = (shape[1], shape[3])

    def _encode(self, feats) -> dict:
        def run(chunk):
            out = self.encoder.infer({"input_features": chunk})
            return [out[name] for name in self.names]

        return ort.encode_chunks(run, self.names, feats, self.encoder_rows)

    def _generate(self, cross: dict, *sampling):
        try:
            return super()._generate(cross, *sampling)
        finally:
            self.request = None

    def _start(self, cross: dict, empty):
        import openvino as ov

        self.request = self.decoder.create_infer_request()
        for state in self.request.query_state():
            state.state = ov.Tensor(empty)

        def step(tokens, positions, mask):
            self.request.infer({"input_ids": tokens, "positions": positions, "mask": mask,
                                **cross}, share_inputs=True)
            return self.request.get_tensor("logits").data.copy()

        return step


QUANTIZER = OpenVino()
