"""Shared mechanics of the per-library tests (tests/unit/test_quant_*.py), tiny random model only."""

from __future__ import annotations

import torch

from whisper_ptq.modeling import load_fp32
from whisper_ptq.quantizers import get

FEATS = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))


def outputs(model, new_tokens: int = 3):
    """Greedy tokens and the logits of a short teacher-forced decode."""
    with torch.no_grad():
        feats = FEATS.to(model.model.encoder.conv1.weight.dtype).to(model.device)
        tokens = model.generate(feats, max_new_tokens=new_tokens, do_sample=False, num_beams=1)
        dec = torch.full((1, 4), model.config.decoder_start_token_id, device=model.device)
        logits = model(input_features=feats, decoder_input_ids=dec).logits.float().cpu()
    return tokens.cpu(), logits


def roundtrip(library: str, raw: dict, model_dir, out_dir, calibration=None):
    """Quantize in memory, save (before any forward pass, as save_checkpoint does), reload.

    Returns (entry, in-memory model, reloaded model).
    """
    q = get(library)
    entry = q.validate("e", {"library": library, **raw})
    model = q.quantize(load_fp32(model_dir), entry, calibration).model
    out_dir.mkdir(parents=True, exist_ok=True)
    q.save(model, entry, out_dir)
    reloaded = q.load(out_dir, model_dir, entry, "cpu")
    return entry, model, reloaded


def assert_same_outputs(a, b):
    ta, la = outputs(a)
    tb, lb = outputs(b)
    assert torch.equal(ta, tb)
    assert torch.equal(la, lb)
    return la


def fp32_logits(model_dir):
    return outputs(load_fp32(model_dir))[1]
