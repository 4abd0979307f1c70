"""Checkpoint save/load mechanics for the fp and torch modules (tiny random model)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from whisper_ptq import PipelineError
from whisper_ptq.checkpoint import load_checkpoint, save_checkpoint
from whisper_ptq.modeling import check_device, load_fp32
from whisper_ptq.quantizers import get

FEATS = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        dec = torch.full((FEATS.shape[0], 4), model.config.decoder_start_token_id)
        return model(input_features=FEATS.to(model.dtype), decoder_input_ids=dec).logits.float()


def test_fp32_checkpoint_reloads_identically(random_model_dir, tmp_path):
    entry = get("fp").validate("fp32", {"library": "fp", "scheme": "fp32"})
    meta = save_checkpoint("fp32", entry, random_model_dir, tmp_path / "fp32")
    model, meta2 = load_checkpoint(tmp_path / "fp32", random_model_dir, "cpu")
    assert torch.equal(logits(model), logits(load_fp32(random_model_dir)))
    # what save returns is what the checkpoint holds and load reads back, field by field
    assert meta2.to_json() == json.loads((tmp_path / "fp32" / "quant.json").read_text())
    assert meta2 == meta and meta2.config == entry and meta2.entry == "fp32"
    assert meta.bytes_on_disk > 0 and meta.linear_bytes == meta.fp32_linear_bytes


@pytest.mark.parametrize("granularity", ["per-tensor", "per-channel"])
def test_torch_dynamic_int8_reloads_identically(random_model_dir, tmp_path, granularity):
    q = get("torch")
    entry = q.validate("t", {"library": "torch", "scheme": "int8-dynamic", "granularity": granularity})
    in_memory = q.quantize(load_fp32(random_model_dir), entry).model
    meta = save_checkpoint("t", entry, random_model_dir, tmp_path / "t")
    reloaded, _ = load_checkpoint(tmp_path / "t", random_model_dir, "cpu")
    assert torch.equal(logits(reloaded), logits(in_memory))
    assert not torch.equal(logits(reloaded), logits(load_fp32(random_model_dir)))
    kinds = {type(m).__name__ for m in reloaded.modules()}
    assert "Linear" in kinds and not any(isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear
                                         for m in reloaded.modules())
    # int8 weights: the linear layers shrink to about a quarter
    assert 0.2 < meta.linear_bytes / meta.fp32_linear_bytes < 0.35
    assert meta.facts == {"library": "torch", "weights": "int8", "activations": "int8",
                             "act_mode": "dynamic", "symmetric": True, "granularity": granularity,
                             "group_size": None, "parts": "all",
                             "unquantized": ["conv front-end", "embed_tokens", "embed_positions",
                                             "layer norms"]}
    # ... and those really are float in the reloaded model
    enc, dec = reloaded.model.encoder, reloaded.model.decoder
    assert {p.dtype for p in (enc.conv1.weight, dec.embed_tokens.weight,
                              dec.embed_positions.weight, enc.layer_norm.weight)} == {torch.float32}
    per_ch = reloaded.model.encoder.layers[0].fc1.weight().qscheme()
    assert (per_ch == torch.per_channel_affine) == (granularity == "per-channel")


def test_checkpoint_loading_never_unpickles_objects(random_model_dir, tmp_path):
    entry = get("torch").validate("t", {"library": "torch", "scheme": "int8-dynamic"})
    save_checkpoint("t", entry, random_model_dir, tmp_path / "t")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "t" / "model.pt")
    with pytest.raises(PipelineError, match=r"refusing to unpickle \S*/t/model.pt: it contains "
                                            r"code \(Unsupported global: GLOBAL print\)") as e:
        load_checkpoint(tmp_path / "t", random_model_dir, "cpu")
    assert "weights_only=False" not in str(e.value)


def test_incomplete_checkpoint_is_refused(tmp_path, random_model_dir):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(PipelineError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "ckpt", random_model_dir, "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_without_cuda_is_a_clear_error(random_model_dir, tmp_path):
    with pytest.raises(PipelineError, match="device 'cuda' was requested but no CUDA device"):
        check_device("cuda")
    entry = get("fp").validate("fp32", {"library": "fp", "scheme": "fp32"})
    save_checkpoint("fp32", entry, random_model_dir, tmp_path / "fp32")
    from whisper_ptq.transcribe import transcribe_checkpoint

    with pytest.raises(PipelineError, match="no CUDA device"):
        transcribe_checkpoint(tmp_path / "fp32", random_model_dir, "x", "y", "cuda", {},
                              tmp_path / "h.jsonl", tmp_path / "t.json", threads=1)
    assert not (tmp_path / "h.jsonl").exists()


def test_torch_checkpoint_on_cuda_is_refused(random_model_dir, tmp_path):
    entry = get("torch").validate("t", {"library": "torch", "scheme": "int8-dynamic"})
    save_checkpoint("t", entry, random_model_dir, tmp_path / "t")
    with pytest.raises(PipelineError, match="cannot run on cuda"):
        load_checkpoint(tmp_path / "t", random_model_dir, "cuda")


# checkpoints read back with torch.load(weights_only=True): the tensor types they hold must be
# registered in the process that loads them, which for a transcribe job is a fresh one
PICKLED = {"torch": {"scheme": "int8-dynamic"}, "torchao": {"scheme": "int4wo", "group_size": 32}}
LOAD_IN_A_FRESH_PROCESS = """
import sys, torch
from whisper_ptq.checkpoint import load_checkpoint
model, _ = load_checkpoint(sys.argv[1], sys.argv[2], "cpu")
feats = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    dec = torch.full((2, 4), model.config.decoder_start_token_id)
    torch.save(model(input_features=feats, decoder_input_ids=dec).logits.float(), sys.argv[3])
"""


def test_pickled_checkpoints_load_in_a_fresh_process(random_model_dir, tmp_path):
    """A reload in the quantizing process can pass only because quantizing imported the module
    that registers the tensor type (torchao's int4 did, and its transcribe jobs failed)."""
    import whisper_ptq

    env = {**os.environ, "PYTHONPATH": str(Path(whisper_ptq.__file__).parents[1])}
    procs = {}
    for library, raw in PICKLED.items():
        entry = get(library).validate(library, {"library": library, **raw})
        save_checkpoint(library, entry, random_model_dir, tmp_path / library)
        procs[library] = subprocess.Popen(
            [sys.executable, "-c", LOAD_IN_A_FRESH_PROCESS, str(tmp_path / library),
             str(random_model_dir), str(tmp_path / f"{library}.pt")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for library, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{library}: the checkpoint does not load in a fresh process:\n{out[-2000:]}"
        here, _ = load_checkpoint(tmp_path / library, random_model_dir, "cpu")
        assert torch.allclose(torch.load(tmp_path / f"{library}.pt"), logits(here), atol=1e-5)
