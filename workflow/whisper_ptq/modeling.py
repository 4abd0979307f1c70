"""Model sources (hub id or local directory), devices, and fp32 model loading."""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

from . import PipelineError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Files of a Hugging Face Whisper checkpoint that the pipeline needs.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "added_tokens.json",
    "special_tokens_map.json",
    "model.safetensors",
)


def is_local_source(source: str) -> bool:
    """A local directory is an existing path, or anything that looks like a path."""
    return (
        os.path.exists(os.path.expanduser(source))
        or source.startswith(("/", ".", "~"))
        or not HUB_ID.match(source)
    )


def check_source(source: str) -> None:
    """Raise PipelineError for a local model directory that is missing or not a checkpoint."""
    if not is_local_source(source):
        return
    path = Path(os.path.expanduser(source))
    if not path.is_dir():
        raise PipelineError(
            f"model directory {source} does not exist (config key 'model'; give an existing "
            f"directory or a hub id like openai/whisper-small)"
        )
    if not (path / "config.json").is_file():
        raise PipelineError(f"model directory {source} has no config.json: not a Hugging Face checkpoint")
    check_whisper_config(path / "config.json", f"model directory {source}")


def check_whisper_config(config_json: Path, where: str) -> None:
    """Raise PipelineError unless ``config_json`` is a Whisper model's config."""
    import json

    try:
        model_type = json.loads(config_json.read_text()).get("model_type")
    except OSError as e:
        raise PipelineError(f"{where}: cannot read config.json ({e})") from e
    except (ValueError, AttributeError) as e:
        raise PipelineError(f"{where}: config.json is not a JSON object ({e})") from e
    if model_type != "whisper":
        raise PipelineError(f"{where} is not a Whisper checkpoint: its config.json has "
                            f"model_type {model_type!r}, expected 'whisper'")


# the weights' blocks that source_fingerprint reads: about 1 MiB however large the file
WEIGHT_SAMPLES, SAMPLE_BYTES = 16, 1 << 16


def source_fingerprint(source: str) -> str:
    """A short digest of what the ``model`` rule copies (its Snakemake param: a change re-runs it).

    Hub id: the id (its revision is only known online). Local directory: sha256 over the
    name and full content of each of MODEL_FILES present, except the weights
    (model.safetensors), of which it covers the size, the safetensors header (tensor names,
    dtypes, shapes, offsets) and 16 blocks of 64 KiB at fixed offsets, so it stays fast for
    a multi-GB file. A re-converted or re-trained checkpoint changes those; an edit confined
    to other bytes of the weights is not seen (re-run with ``--forcerun model``).
    """
    import hashlib

    if not is_local_source(source):
        return f"hub:{source}"
    path = Path(os.path.expanduser(source))
    h = hashlib.sha256()
    for name in MODEL_FILES:
        f = path / name
        if not f.is_file():
            continue
        h.update(f"{name}\0".encode())
        if name != "model.safetensors":
            h.update(f.read_bytes())
            continue
        size = f.stat().st_size
        h.update(f"{size}\0".encode())
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            h.update(head + fh.read(n if 0 < n <= size - 8 else 0))
            for i in range(WEIGHT_SAMPLES):
                fh.seek(i * max(0, size - SAMPLE_BYTES) // (WEIGHT_SAMPLES - 1))
                h.update(fh.read(SAMPLE_BYTES))
    return f"sha256:{h.hexdigest()}"


def model_tag(source: str) -> str:
    """Short name used in output paths: the last path component of the source."""
    tag = Path(os.path.expanduser(source.rstrip("/"))).name
    tag = re.sub(r"[^\w.-]", "_", tag)
    if not tag:
        raise PipelineError(f"cannot derive a model name from model source {source!r}")
    return tag


def resolve_model(source: str, dest: str | os.PathLike) -> Path:
    """Materialise the model source as a local directory ``dest`` (atomically).

    Hub ids are downloaded with huggingface_hub (this runs on the login node); local
    directories are copied, so compute jobs never need the hub.
    """
    from .io import atomic_path

    check_source(source)
    dest = Path(dest)
    with atomic_path(dest, is_dir=True) as tmp:
        if is_local_source(source):
            src = Path(os.path.expanduser(source))
            for name in MODEL_FILES:
                if (src / name).is_file():
                    shutil.copy2(src / name, tmp / name)
            if not (tmp / "model.safetensors").is_file():
                raise PipelineError(f"model directory {source} has no model.safetensors")
        else:
            from huggingface_hub import snapshot_download

            from .data import OFFLINE_HINT

            try:
                snapshot_download(source, local_dir=tmp, allow_patterns=list(MODEL_FILES))
            except Exception as e:  # hub errors span lines; the first names the cause
                cause = (str(e).strip().splitlines() or [""])[0]
                raise PipelineError(f"cannot download model {source} from the Hugging Face hub: "
                                    f"{type(e).__name__}: {cause} ({OFFLINE_HINT})") from e
            check_whisper_config(tmp / "config.json", f"model {source} (Hugging Face hub)")
    return dest


def check_device(device: str) -> str:
    """Return a torch device string, or a clear error if it cannot be used here."""
    import torch

    if device == "cpu":
        return "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError(
                f"device 'cuda' was requested but no CUDA device is available on host "
                f"{socket.gethostname()} (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda or 'none'}); run this job on a GPU node "
                f"or set devices=cpu"
            )
        return "cuda"
    raise PipelineError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")


def load_fp32(model_dir, device: str = "cpu"):
    """Load the original fp32 Whisper model from a local directory."""
    import torch
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval().to(device)


def empty_model(model_dir, dtype=None):
    """A Whisper model with the checkpoint's architecture, weights uninitialised (meta)."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def set_threads(n: int) -> int:
    import torch

    torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


# Whisper's output head shares its weight with the token embedding.
HEAD_WEIGHT, EMBED_WEIGHT = "proj_out.weight", "model.decoder.embed_tokens.weight"


def drop_tied_head(state: dict) -> dict:
    """``state`` without the head weight when it is the embedding tensor itself (a float
    ``proj_out`` outside an entry's parts): safetensors refuses shared tensors, and the
    embedding is then stored once. ``tie_head`` restores it after loading."""
    head, embed = state.get(HEAD_WEIGHT), state.get(EMBED_WEIGHT)
    if head is not None and embed is not None and head.data_ptr() == embed.data_ptr():
        return {k: v for k, v in state.items() if k != HEAD_WEIGHT}
    return state


def tie_head(model, state: dict) -> None:
    """Re-tie a float ``proj_out`` to the embedding when ``state`` (as saved) has no head weight."""
    import torch

    if HEAD_WEIGHT not in state and type(model.proj_out) is torch.nn.Linear:
        model.proj_out.weight = model.model.decoder.embed_tokens.weight
