"""Real weights, real audio: the 8-bit entries of the default matrix stay close to fp32.

tiny.en on 8 utterances of the mini test-clean (the full matrix with `base` is run by hand,
see README "Capability matrix"); lower bit-widths are reported by the pipeline, not asserted.
"""

import pytest
import torch
import yaml
from real_study import MAX_WER_INCREASE, N_CALIB, pipeline_wer

from whisper_ptq.checkpoint import save_checkpoint
from whisper_ptq.features import calibration_batches
from whisper_ptq.quantizers import get

pytestmark = pytest.mark.slow

CHECKED = ["torch-int8-dyn", "quanto-int8", "quanto-int8-a8-static", "hqq-int8-g64", "bnb-int8"]
# The static entry is calibrated on only N_CALIB=4 utterances: with quanto's own
# moving-average observer that collapsed (tiny.en 5.5 -> 40.9 WER on 24 utterances); the
# default minmax observer must hold the same bound as the weight-only entries.
REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def eight_bit_entries():
    """One default-config 8-bit entry per library and method (the variants — torch
    per-channel, quanto float8, quanto float8 static — are in the hand-run base matrix)."""
    entries = yaml.safe_load((REPO / "config.yaml").read_text())["entries"]
    out = {}
    for name in CHECKED:
        raw = entries[name]
        q = get(raw["library"])
        entry = q.validate(name, raw)
        assert q.describe(entry)["weights"].startswith("int8") and not q.unsupported(entry, "cpu")
        out[name] = entry
    return out


def test_eight_bit_entries_stay_close_to_fp32(tiny_en_dir, real_cache, tiny_fp32_wer, tmp_path):
    torch.set_num_threads(2)
    entries = eight_bit_entries()
    base = tiny_fp32_wer
    assert base < 15  # tiny.en on clean read speech: a sanity check of the harness
    d, _ = real_cache
    wers = {}
    for name, entry in entries.items():
        calibration = None
        if get(entry["library"]).needs_calibration(entry):
            _, calibration = calibration_batches(d / "f.safetensors", d / "m.jsonl", N_CALIB)
        save_checkpoint(name, entry, tiny_en_dir, tmp_path / name, calibration=calibration)
        wers[name] = pipeline_wer(tmp_path / name, tiny_en_dir, real_cache)
        print(f"{name}: WER {wers[name]:.2f} (fp32 {base:.2f})", flush=True)
    print(f"fp32 WER {base:.2f}; " + ", ".join(f"{n} {w:.2f}" for n, w in wers.items()))
    assert any(get(e["library"]).needs_calibration(e) for e in entries.values())
    far = {n: round(w - base, 2) for n, w in wers.items() if w - base > MAX_WER_INCREASE}
    assert not far, f"8-bit entries too far above fp32 ({base:.2f} WER): {far}"


def test_bnb_4bit_checkpoint_matches_the_in_memory_model_on_real_weights(tiny_en_dir, real_cache,
                                                                          tmp_path):
    """Catches the CPU repack bug: the checkpoint must decode like the model it came from."""
    from whisper_ptq.features import FeatureCache
    from whisper_ptq.modeling import load_fp32

    q = get("bnb")
    d, calib = real_cache
    cache = FeatureCache(d / "f.safetensors")
    # one utterance, 40 tokens: the repack bug changed the first tokens already
    feats = cache.get(calib[0])[None, ..., :3000]
    for raw in ({"scheme": "nf4"}, {"scheme": "fp4", "double_quant": True}):
        entry = q.validate("b", {"library": "bnb", **raw})
        model = q.quantize(load_fp32(tiny_en_dir), entry).model
        out = tmp_path / raw["scheme"]
        out.mkdir()
        q.save(model, entry, out)
        reloaded = q.load(out, tiny_en_dir, entry, "cpu")
        with torch.no_grad():
            a = model.generate(feats, max_new_tokens=40)
            b = reloaded.generate(feats, max_new_tokens=40)
        assert torch.equal(a, b)
