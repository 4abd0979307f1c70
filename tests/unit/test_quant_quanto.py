"""Optimum-Quanto module: weight-only and static-activation schemes (tiny random model)."""

import json

import pytest
import torch
from quant_roundtrip import assert_same_outputs, fp32_logits, roundtrip
from test_benchmarks import import_benchmark

from whisper_ptq import PipelineError
from whisper_ptq.checkpoint import load_checkpoint, save_checkpoint
from whisper_ptq.modeling import load_fp32
from whisper_ptq.quantizers import get
from whisper_ptq.quantizers.quanto import _float_outputs

CALIB = [torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(1))]


@pytest.fixture
def short_calibration(monkeypatch):
    import whisper_ptq.quantizers.quanto as qq

    monkeypatch.setattr(qq, "CALIBRATION_MAX_TOKENS", 2)


@pytest.mark.parametrize("scheme", ["int8", "int4", "int2", "float8"])
def test_weight_only_reloads_identically(random_model_dir, tmp_path, scheme):
    entry, model, reloaded = roundtrip("quanto", {"scheme": scheme}, random_model_dir, tmp_path)
    logits = assert_same_outputs(model, reloaded)
    assert not torch.equal(logits, fp32_logits(random_model_dir))
    qmap = json.loads((tmp_path / "quantization_map.json").read_text())
    assert qmap["proj_out"]["weights"].startswith({"float8": "qfloat8"}.get(scheme, "q" + scheme))
    assert qmap["model.encoder.layers.0.fc1"]["activations"] == "none"
    assert not any(k.endswith(".pt") for k in map(str, tmp_path.iterdir()))


@pytest.mark.parametrize("scheme", ["int8-a8-static", "float8-afp8-static"])
def test_static_activations_reload_identically(random_model_dir, tmp_path, scheme,
                                              short_calibration):
    entry, model, reloaded = roundtrip("quanto", {"scheme": scheme}, random_model_dir, tmp_path,
                                       calibration=CALIB)
    assert_same_outputs(model, reloaded)
    qmap = json.loads((tmp_path / "quantization_map.json").read_text())
    act = "qint8" if scheme.startswith("int8") else "qfloat8_e4m3fn"
    assert qmap["model.encoder.layers.0.fc1"]["activations"] == act
    assert qmap["proj_out"]["activations"] == "none"  # generate() crashes otherwise
    # calibration set real (non-default) input scales
    assert reloaded.model.encoder.layers[0].fc1.input_scale.item() != 1.0


def test_static_entry_needs_calibration(random_model_dir, tmp_path):
    q = get("quanto")
    entry = q.validate("s", {"library": "quanto", "scheme": "int8-a8-static"})
    assert q.needs_calibration(entry)
    assert not q.needs_calibration(q.validate("w", {"library": "quanto", "scheme": "int8"}))
    with pytest.raises(PipelineError, match="needs calibration data"):
        save_checkpoint("s", entry, random_model_dir, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_checkpoint_meta_and_sizes(random_model_dir, tmp_path):
    q = get("quanto")
    metas = {}
    for scheme in ("int8", "int4"):
        entry = q.validate(scheme, {"library": "quanto", "scheme": scheme})
        metas[scheme] = save_checkpoint(scheme, entry, random_model_dir, tmp_path / scheme)
    m8, m4 = metas["int8"], metas["int4"]
    want = {"library": "quanto", "weights": "int8", "activations": "float32", "act_mode": "none",
            "symmetric": True, "granularity": "per-channel", "group_size": None}
    assert {k: m8.facts[k] for k in want} == want
    assert m4.facts["symmetric"] is False and m4.facts["granularity"] == "per-group"
    assert "embed_tokens" in m8.facts["unquantized"]
    # int8: a byte per weight + a float32 scale per row ≈ a quarter of fp32
    assert 0.25 < m8.linear_bytes / m8.fp32_linear_bytes < 0.3
    assert m4.linear_bytes < 0.65 * m8.linear_bytes
    assert m4.bytes_on_disk < m8.bytes_on_disk
    model, _ = load_checkpoint(tmp_path / "int8", random_model_dir, "cpu")
    assert type(model.proj_out).__name__ == "QLinear"


def test_bad_entries_are_clear_errors():
    q = get("quanto")
    with pytest.raises(PipelineError, match="unknown scheme 'int3' for library 'quanto'"):
        q.validate("x", {"library": "quanto", "scheme": "int3"})
    with pytest.raises(PipelineError, match="need 8-bit weights"):
        q.validate("x", {"library": "quanto", "scheme": "int4", "activations": "int8"})
    with pytest.raises(PipelineError, match="option 'group_size' is not known"):
        q.validate("x", {"library": "quanto", "scheme": "int4", "group_size": 64})


@pytest.mark.parametrize("observer, want", [
    ("minmax", 3.0),  # the largest absmax seen
    # quanto's moving average: 1 (first step), then 0.9 * 1 + 0.1 * 3, then 0.9 * 1.2 + 0.1 * 2
    ("moving-average", 1.28),
])
def test_observers_turn_calibration_steps_into_scales(observer, want):
    from optimum.quanto import qint8, quantize

    from whisper_ptq.quantizers.quanto import _calibration_mode

    layer = torch.nn.Sequential(torch.nn.Linear(4, 4))
    quantize(layer, weights=qint8, activations=qint8)
    with torch.no_grad(), _calibration_mode(observer)(momentum=0.9):
        for v in (1.0, 3.0, 2.0):
            layer(torch.full((1, 4), v))
    assert float(layer[0].input_scale) == pytest.approx(want / 127)


def test_observer_is_a_static_option():
    q = get("quanto")
    assert q.validate("s", {"library": "quanto", "scheme": "int8-a8-static"})["observer"] == "minmax"
    e = q.validate("s", {"library": "quanto", "scheme": "int8-a8-static", "observer": "moving-average"})
    assert q.describe(e)["act_mode"] == "static (moving-average)"
    with pytest.raises(PipelineError, match="'observer' is for static activations"):
        q.validate("w", {"library": "quanto", "scheme": "int8", "observer": "minmax"})
    with pytest.raises(PipelineError, match="observer=.*invalid"):
        q.validate("s", {"library": "quanto", "scheme": "int8-a8-static", "observer": "ema"})



@pytest.mark.parametrize("scheme, observer", [("int8-a8-static", "minmax"),
                                              ("int8-a8-static", "moving-average"),
                                              ("float8-afp8-static", "minmax")])
def test_calibrating_the_frozen_model_gives_the_model_of_quanto_s_own_order(
        random_model_dir, scheme, observer, short_calibration):
    """The module freezes before calibrating (each forward of an unfrozen layer quantizes its
    weight anew); quanto's examples calibrate first (benchmarks/calibration.py times both)."""
    bench = import_benchmark("calibration")
    q = get("quanto")
    entry = q.validate("s", {"library": "quanto", "scheme": scheme, "observer": observer})
    ours = q.quantize(load_fp32(random_model_dir), entry, calibration=CALIB).model
    theirs, _ = bench.calibrated(random_model_dir, entry, CALIB, "quanto_order")
    state = ours.state_dict()
    scales = [k for k in state if k.endswith(("input_scale", "output_scale"))]
    assert scales and any(float(state[k].max()) != 1.0 for k in scales)  # calibrated, not defaults
    assert _float_outputs(ours)  # streamline left some outputs float: compared too
    assert bench.same(ours, theirs)
