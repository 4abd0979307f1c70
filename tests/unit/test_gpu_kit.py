"""The GPU kit (scripts/gpu_kit, docs/gpu.md) without a GPU.

* parts fit what one device call may send (≤ 60 MiB, and ≤ 64 MiB with the repo's files);
* the fp32 weights are rebuilt byte for byte from fp16 (sha256), and tiny.en is fp16-exact;
* ``prepare`` then ``stage --then-run`` of every part ends, without CUDA, in one clear
  "no CUDA device" line and a non-zero exit, after verifying every file;
* the check's own code (tables, agreement, random-weight search) runs on CPU (--device cpu);
* plans are checked before any device time is spent; each run comes back as one file, which
  ``unpack`` places and ``merge.py`` joins; quanto's kernels, built once, are kept and loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
KIT_DIR = REPO / "scripts" / "gpu_kit"
MIB = 2**20


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_kit_{name}", KIT_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


kit = _module("kit")


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_fp32(path, tensors: dict):
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def test_fp16_round_trip_is_byte_identical(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {name: rng.standard_normal(shape).astype(np.float16).astype(np.float32)
               for name, shape in [("b.weight", (300, 50)), ("a.bias", (3,)), ("c", (20, 20, 2))]}
    src = tmp_path / "model.safetensors"
    write_fp32(src, tensors)
    rebuild = kit.fp32_to_fp16(src, tmp_path / "w.fp16.safetensors")
    assert (tmp_path / "w.fp16.safetensors").stat().st_size < src.stat().st_size * 0.6
    from safetensors.numpy import load_file

    half = load_file(str(tmp_path / "w.fp16.safetensors"))  # a valid safetensors file
    assert {k: v.dtype for k, v in half.items()} == {k: np.float16 for k in tensors}
    out = tmp_path / "rebuilt.safetensors"
    kit.fp16_to_fp32(tmp_path / "w.fp16.safetensors", rebuild, out)
    assert sha(out) == sha(src)


def test_fp16_refuses_weights_it_cannot_carry_exactly(tmp_path):
    src = tmp_path / "model.safetensors"
    write_fp32(src, {"w": np.array([1.0, 1.0 + 2**-20], dtype=np.float32)})
    with pytest.raises(kit.KitError, match="not exactly representable in fp16"):
        kit.fp32_to_fp16(src, tmp_path / "x")


def test_pack_fills_parts_within_the_cap():
    items = [{"name": f"w{i}", "kind": "wheel", "bytes": b} for i, b in
             enumerate([43 * MIB, 19 * MIB, 9 * MIB, 3 * MIB, 10_000])]
    parts = kit.pack(items, {"name": "m.fp16", "bytes": 75 * MIB}, 60 * MIB)
    sizes = [sum(it["bytes"] for it in p) for p in parts]
    assert all(s <= 60 * MIB for s in sizes)
    assert len(parts) == 3  # 149 MiB in all: three parts, no more
    chunks = sorted((it for p in parts for it in p if it["kind"] == "chunk"),
                    key=lambda it: it["offset"])
    assert sum(c["bytes"] for c in chunks) == 75 * MIB
    assert [c["offset"] for c in chunks] == list(np.cumsum([0] + [c["bytes"] for c in chunks[:-1]]))
    with pytest.raises(kit.KitError, match="more than one part"):
        kit.pack([{"name": "big", "kind": "wheel", "bytes": 61 * MIB}], {"name": "m", "bytes": 1}, 60 * MIB)


def test_wheel_list_is_requirements_minus_the_image():
    wanted = kit.wanted_packages(kit.requirement_pins(), kit.image_packages())
    for name in ("optimum-quanto", "hqq", "bitsandbytes", "jiwer", "whisper-normalizer",
                 "soundfile"):
        assert name in wanted
    for name in ("torch", "transformers", "accelerate", "safetensors", "numpy", "pyyaml",
                 "snakemake", "pytest", "huggingface-hub"):
        assert name not in wanted
    # a package added to requirements.txt later is picked up without touching the kit
    assert "newpkg" in kit.wanted_packages({**kit.requirement_pins(), "newpkg": "1.0"},
                                           kit.image_packages())


def test_check_without_cuda_is_one_clear_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    check = _module("check")
    rc = check.main(["--model", str(tmp_path), "--mini", str(tmp_path), "--out",
                     str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no CUDA device is available" in err[0]
    assert not (tmp_path / "out").exists()


def _stage(part, root, *extra):
    env = dict(os.environ, WHISPER_PTQ_KIT_ROOT=str(root))
    return subprocess.run([sys.executable, str(KIT_DIR / "kit.py"), "stage", str(part),
                           "--then-run", *extra], capture_output=True, text=True, env=env,
                          cwd=REPO)


@pytest.mark.slow  # real tiny.en weights and the mini archives (~10 s)
def test_prepare_then_stage_without_cuda(tmp_path, tiny_en_dir, mini_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out, root = tmp_path / "kit", tmp_path / "root"
    subprocess.run([sys.executable, str(KIT_DIR / "kit.py"), "prepare", "--skip-wheels",
                    "--out", str(out), "--model", str(tiny_en_dir), "--mini", str(mini_dir)],
                   check=True, capture_output=True, text=True)
    parts = sorted(out.glob("part*"))
    manifest = json.loads((parts[0] / kit.MANIFEST).read_text())
    assert len(parts) == manifest["parts"] >= 2
    tree = kit.tree_bytes()
    for p in parts:
        size = sum(f.stat().st_size for f in p.iterdir())
        assert size <= 60 * MIB and size + tree <= 64 * MIB, (p.name, size, tree)
    # staged in any order; only the call that completes the set runs
    for p in parts[:0:-1]:
        r = _stage(p, root)
        assert r.returncode == 0 and "not running yet" in r.stdout, r.stderr
    r = _stage(parts[0], root)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]  # one line, no traceback
    assert "gpu_kit: error: no CUDA device" in r.stderr
    assert "files verified (sha256)" in r.stdout
    rebuilt = root / "model" / "tiny.en"
    assert sha(rebuilt / "model.safetensors") == sha(tiny_en_dir / "model.safetensors")
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        assert sha(rebuilt / name) == sha(tiny_en_dir / name)
    assert {f.name for f in (root / "files").iterdir()} == {f["name"] for f in manifest["files"]}
    # the same run with --device cpu reaches the check (a subprocess on the kit's paths)
    env = dict(os.environ, WHISPER_PTQ_KIT_ROOT=str(root), OUT=str(tmp_path / "out"))
    r = subprocess.run([sys.executable, str(KIT_DIR / "kit.py"), "run", "--", "--device", "cpu",
                        "--no-real", "--shapes", "test", "--entries", "fp32", "--batch-size",
                        "2", "--max-batch", "2", "--tokens", "2", "--threads", "1"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-3000:]
    # one file per run comes back (a device call returns at most 8), unpacked here by date
    assert [f.name for f in (tmp_path / "out").iterdir()] == ["check.tar.gz"]
    assert "| test (random) | fp32 |" in r.stdout  # the tables are in the reply too
    r = subprocess.run([sys.executable, str(KIT_DIR / "kit.py"), "unpack", str(tmp_path / "out"),
                        "--into", str(tmp_path / "runs")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d{4}-check", run_dir.name)
    assert {f.name for f in run_dir.iterdir()} == {"results.md", "results.json", "check.log"}
    assert f"kit {manifest['kit_id']}" in (run_dir / "results.md").read_text()
    # a plan: each run into its own file, the common arguments after --; merge.py joins them
    plan = tmp_path / "plan.txt"
    plan.write_text("# the runs of a plan come back as one file each\n"
                    "b: --entries quanto-int8 --budget-s 60\n")
    r = subprocess.run([sys.executable, str(KIT_DIR / "kit.py"), "run", "--plan", str(plan), "--",
                        "--device", "cpu", "--no-real", "--shapes", "test", "--batch-size", "2",
                        "--max-batch", "2", "--tokens", "2", "--threads", "1"],
                       capture_output=True, text=True, env=dict(env, OUT=str(tmp_path / "plan")))
    assert r.returncode == 0 and "plan done: b exit 0" in r.stdout, r.stdout[-3000:]
    assert [f.name for f in (tmp_path / "plan").iterdir()] == ["b.tar.gz"]
    assert kit.main(["unpack", str(tmp_path / "plan"), "--into", str(tmp_path / "runs")]) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert sorted(d.name.rsplit("-", 1)[1] for d in runs) == ["b", "check"]
    assert [json.loads((d / "results.json").read_text())["device"]["model_sha256"]
            for d in runs] == [manifest["weights"]["fp32_sha256"]] * 2
    assert _module("merge").main(["--out", str(tmp_path / "merged"), *map(str, runs)]) == 0
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert [row["entry"] for row in merged["synthetic"]] == ["fp32", "quanto-int8"]
    # staging again copies nothing; a file lost on the machine names its part
    r = _stage(parts[0], root)
    assert "(0.0 MiB copied)" in r.stdout
    lost = next(f for f in manifest["files"] if f["part"] == 2)
    (root / "files" / lost["name"]).unlink()
    r = _stage(parts[0], root)
    assert r.returncode == 0 and "not running yet: stage part2 next" in r.stdout
    (root / "files" / lost["name"]).write_bytes(b"damaged")
    r = subprocess.run([sys.executable, str(KIT_DIR / "kit.py"), "run"], capture_output=True,
                       text=True, env=dict(os.environ, WHISPER_PTQ_KIT_ROOT=str(root)))
    assert r.returncode == 2 and "parts missing or damaged" in r.stderr and "part2" in r.stderr


@pytest.mark.slow  # reads the real tiny.en weights
def test_tiny_en_weights_are_fp16_exact(tiny_en_dir):
    from safetensors.numpy import load_file

    for name, w in load_file(str(tiny_en_dir / "model.safetensors")).items():
        assert w.dtype == np.float32
        assert np.array_equal(w.astype(np.float16).astype(np.float32).view(np.uint32),
                              w.view(np.uint32)), name


def small_mirror(mini_dir: Path, dest: Path, counts: dict) -> Path:
    """Archives with the first ``counts[split]`` utterances of each real mini archive."""
    dest.mkdir()
    for split, n in counts.items():
        with tarfile.open(mini_dir / f"{split}.tar.gz") as src:
            members = [m for m in src.getmembers() if m.isfile()]
            flacs = sorted(m.name for m in members if m.name.endswith(".flac"))[:n]
            keep = {Path(f).stem for f in flacs}
            with tarfile.open(dest / f"{split}.tar.gz", "w:gz") as out:
                for m in members:
                    if m.name in flacs:
                        out.addfile(m, src.extractfile(m))
                    elif m.name.endswith(".trans.txt"):
                        lines = [ln for ln in src.extractfile(m).read().decode().splitlines()
                                 if ln.split(" ", 1)[0] in keep]
                        if lines:
                            data = ("\n".join(lines) + "\n").encode()
                            m.size = len(data)
                            out.addfile(m, io.BytesIO(data))
    return dest


@pytest.mark.slow  # real tiny.en on real audio, on CPU
def test_check_dry_run_on_cpu(tmp_path, tiny_en_dir, mini_dir):
    """The check end to end on CPU: real tiny.en (fp32, and quanto int8 with its ΔWER; fp16
    is GPU-only), the CPU-against-device agreement, and the random-weight search (fp32,
    quanto int8, profiled) on a test-sized shape. (Quanto int8: the quickest entry to
    quantize that runs on both devices; HQQ's solver took most of this test's time.)"""
    mirror = small_mirror(mini_dir, tmp_path / "mini", {"test-clean": 17, "test-other": 1})
    check = _module("check")
    out = tmp_path / "out"
    rc = check.main(["--model", str(tiny_en_dir), "--mini", str(mirror), "--out", str(out),
                     "--work", str(tmp_path / "work"), "--scratch", str(tmp_path / "scratch"),
                     "--device", "cpu", "--entries", "fp32,fp16,quanto-int8", "--shapes",
                     "test", "--limit", "1", "--batch-size", "2", "--max-batch", "4",
                     "--tokens", "4", "--max-batch-entries", "fp32", "--threads", "1", "--cpu-threads", "1",
                     "--budget-s", "3000", "--real-entries", "fp32,fp16,quanto-int8", "--base-repeats", "2",
                     "--profile-entries", "quanto-int8", "--profile-tokens", "3"])
    assert rc == 0
    d = json.loads((out / "results.json").read_text())
    real = {(r["entry"], r["split"]): r for r in d["real"]}
    assert set(real) == {(e, s) for e in ("fp32", "quanto-int8")
                         for s in ("test-clean", "test-other")}
    assert all(r["utterances"] == 1 for r in real.values())
    # ΔWER against the same run's fp32, on the same utterance
    assert "dwer" not in real[("fp32", "test-clean")]
    q8 = real[("quanto-int8", "test-clean")]
    assert q8["dwer"] == pytest.approx(q8["wer"] - real[("fp32", "test-clean")]["wer"])
    assert q8["dwer_lo"] <= q8["dwer"] <= q8["dwer_hi"]
    assert real[("fp32", "test-clean")]["wer"] < 30  # real weights on real speech
    assert real[("fp32", "test-clean")]["mb_on_disk"] > 100  # tiny.en in fp32: 144 MiB
    not_run = {(r["entry"], r["status"]) for r in d["not_run"]}
    assert not_run == {("fp16", "unsupported")}
    ag = d["agreement"]["splits"]
    assert [s["split"] for s in ag] == ["test-clean", "test-other"]
    assert all(s["same"] == s["utterances"] == 1 and not s["differ"] for s in ag)
    syn = {r["entry"]: r for r in d["synthetic"]}
    assert set(syn) == {"fp32", "quanto-int8"}
    assert syn["fp32"]["base"]["batch"] == 2 and syn["fp32"]["max"]["batch"] == 4
    assert syn["fp32"]["base"]["seconds"] == min(syn["fp32"]["base"]["repeats_s"])
    assert len(syn["quanto-int8"]["base"]["repeats_s"]) == 2
    # each batch size's first pass is kept apart from the timed ones (base and largest batch)
    assert syn["fp32"]["base"]["first_s"] > 0 and syn["fp32"]["max"]["first_s"] > 0
    assert syn["quanto-int8"]["base"]["first_s"] > 0
    # the profiled entry: two passes at a batch no other pass used, held to --profile-tokens
    assert "profile" not in syn["fp32"]
    prof = syn["quanto-int8"]["profile"]
    assert (prof["batch"], prof["tokens"]) == (3, 3)
    assert [q["pass"] for q in prof["passes"]] == ["first", "repeat"]
    for q in prof["passes"]:
        assert q["tokens"] == 3 * 3 and q["gpu_busy_s"] is None and q["kernels"] == []
        assert any(o["name"].startswith("aten::") for o in q["cpu_ops"])  # HQQ's own too
        assert q["cpu_ops"][0]["ms"] >= q["cpu_ops"][-1]["ms"] > 0
    # exactly --tokens new tokens per utterance, though random weights would stop anywhere
    assert syn["fp32"]["base"]["tokens"] == 2 * 4 and syn["fp32"]["max"]["tokens"] == 4 * 4
    assert syn["quanto-int8"]["max"] is None
    assert syn["quanto-int8"]["stopped_by"].startswith("not searched")
    md = (out / "results.md").read_text()
    assert md.startswith("# GPU check: no GPU: CPU dry run; torch ")
    assert "| fp32 | test-other | 1 |" in md
    assert "| test (random) | quanto-int8 |" in md
    assert "**test (random) quanto-int8**, batch 3, 3 new tokens" in md
    assert "- repeat pass " in md and "most self CPU time: aten::" in md
    assert "| tiny.en | fp16 | unsupported |" in md
    assert "test-clean: 1 of 1 hypotheses identical" in md
    assert {p.name for p in (out / "hyps").iterdir()} == {  # kept for ΔWER (merge.py)
        f"{e}.{s}.jsonl" for e, s in real}


def test_sdpa_backends_are_restricted_for_the_run_and_restored(tmp_path, random_model_dir):
    """--sdpa: the run's rows say which attention backends were allowed (a row under the
    default stays apart in merge.py), the header records them, and torch's flags are put back.
    Without the real model's table, an entry the device cannot run is listed per shape."""
    import torch

    check = _module("check")
    before = check.diagnose.sdpa_state()["enabled"]
    out = tmp_path / "out"
    rc = check.main(["--model", str(random_model_dir), "--mini", str(tmp_path), "--out", str(out),
                     "--work", str(tmp_path / "work"), "--scratch", str(tmp_path / "scratch"),
                     "--device", "cpu", "--no-real", "--shapes", "test", "--entries", "fp32,fp16",
                     "--batch-size", "1", "--max-batch", "1", "--tokens", "2", "--threads", "1",
                     "--sdpa", "math", "--budget-s", "600"])
    assert rc == 0
    d = json.loads((out / "results.json").read_text())
    assert d["device"]["sdpa"]["enabled"] == ["math"]
    assert [(r["model"], r["entry"]) for r in d["synthetic"]] == [("test (random, sdpa math)", "fp32")]
    assert [(r["model"], r["entry"], r["status"]) for r in d["not_run"]] == [
        ("test (random, sdpa math)", "fp16", "unsupported")]
    assert "--sdpa math" in (out / "results.md").read_text().splitlines()[2]
    assert check.diagnose.sdpa_state()["enabled"] == before
    assert torch.backends.cuda.flash_sdp_enabled() == ("flash" in before)


@pytest.mark.parametrize("extra, error", [
    (["--sdpa", "math"], "--sdpa is for the random-weight shapes: add --no-real"),
    (["--no-real", "--sdpa", "fast"], "--sdpa 'fast': want a comma list of flash, efficient, cudnn, math"),
    (["--profile-entries", "bf16"], "--profile-entries ['bf16'] are not among this run's entries"),
    (["--real-entries", "fp32,fp16"], "--real-entries ['fp16'] are not among this run's entries"),
    (["--max-batch-entries", "fp32,bnb-nf5"], "unknown entries ['bnb-nf5']"),
])
def test_a_bad_choice_of_entries_or_backends_is_one_clear_error(tmp_path, random_model_dir, extra, error):
    check = _module("check")
    with pytest.raises(SystemExit, match=re.escape(error)):
        check.main(["--model", str(random_model_dir), "--mini", str(tmp_path), "--out",
                     str(tmp_path / "out"), "--device", "cpu", "--entries", "fp32", *extra])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # tiny.en's tokenizer; builds and decodes whisper-small's shape (~20 s)
def test_random_weights_decode_exactly_the_tokens_asked(tmp_path, tiny_en_dir):
    """Random weights emit timestamp tokens, and two in a row made Whisper's generate decode
    the window again from a later seek (whisper-small's shape: 80 tokens for 16 asked). The
    random models suppress them, so one pass decodes exactly --tokens, as speech would."""
    from transformers import WhisperForConditionalGeneration, WhisperTokenizer

    check = _module("check")
    check.build_random_model("whisper-small", tiny_en_dir, tmp_path / "m", 16, "cpu")
    model = WhisperForConditionalGeneration.from_pretrained(tmp_path / "m")
    gen = model.generation_config
    timestamps = set(range(gen.no_timestamps_token_id + 1, model.config.vocab_size))
    assert timestamps <= set(gen.suppress_tokens)
    tr = check.make_transcriber(model, WhisperTokenizer.from_pretrained(tmp_path / "m"), "cpu",
                                {"batch_size": 2, "max_new_tokens": 16})
    assert check.measure(tr, 2, 80, "cpu")["tokens"] == 2 * 16


def test_budget_guard_still_writes_the_tables(tmp_path, random_model_dir):
    check = _module("check")
    out = tmp_path / "out"
    rc = check.main(["--model", str(random_model_dir), "--mini", str(tmp_path), "--out", str(out),
                     "--work", str(tmp_path / "work"), "--scratch", str(tmp_path / "scratch"),
                     "--device", "cpu", "--no-real", "--shapes", "test", "--entries",
                     "fp32,quanto-int8", "--budget-s", "1"])
    assert rc == 0
    d = json.loads((out / "results.json").read_text())
    assert d["synthetic"] == []
    assert [(r["entry"], r["status"], r["reason"]) for r in d["not_run"]] == [
        ("fp32", "skipped", "time budget"), ("quanto-int8", "skipped", "time budget")]
    assert "| test (random) | quanto-int8 | skipped | time budget |" in (out / "results.md").read_text()


def test_study_loads_without_snakemake(monkeypatch, random_model_dir):
    """The GPU image has no Snakemake: the study gets the schema's defaults without it."""
    check = _module("check")
    args = check.parser().parse_args(["--model", str(random_model_dir), "--mini", ".", "--out", "."])
    with_schema = check.load(args)
    monkeypatch.setitem(sys.modules, "snakemake.utils", None)
    without = check.load(args)
    assert without.config == with_schema.config  # every default filled as validate() does
    assert without.entries == with_schema.entries
    assert without.decoding == with_schema.decoding
    assert without.calibration == with_schema.calibration == {"split": "test-clean", "n": 16}


def test_slim_wheel_drops_other_builds_from_files_and_record(tmp_path):
    import zipfile

    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    names = ["bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so",
             "bitsandbytes/libbitsandbytes_cuda118.so", "bitsandbytes/libbitsandbytes_cuda130.so",
             "bitsandbytes/libbitsandbytes_cuda132.so", "bitsandbytes/libbitsandbytes_rocm64.so"]
    with zipfile.ZipFile(wheel, "w") as z:
        for n in names:
            z.writestr(n, b"x" * 100)
        z.writestr("bitsandbytes-0.50.2.dist-info/RECORD",
                   "".join(f"{n},sha256=abc,100\n" for n in names)
                   + "bitsandbytes-0.50.2.dist-info/RECORD,,\n")
    dropped = kit.slim_wheel(wheel, kit.SLIM["bitsandbytes"])
    keep = ["bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so",
            "bitsandbytes/libbitsandbytes_cuda130.so"]
    assert sorted(dropped) == sorted(set(names) - set(keep))
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == sorted(keep + ["bitsandbytes-0.50.2.dist-info/RECORD"])
        record = z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert [line.split(",")[0] for line in record.splitlines()] == keep + [
        "bitsandbytes-0.50.2.dist-info/RECORD"]


@pytest.mark.slow  # downloads ~50 MB from PyPI
def test_wheels_for_the_gpu_image(tmp_path):
    """Every requirements.txt package the image lacks, and what it needs, as a wheel that
    python 3.12 on manylinux x86-64 can install; none of the image's own packages."""
    from packaging.utils import parse_wheel_filename

    import urllib.request

    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=20).close()
    except OSError as e:
        pytest.skip(f"PyPI unreachable: {e}")
    wheels = kit.resolve_wheels(kit.requirement_pins(), kit.image_packages(), tmp_path,
                                log=lambda *_: None)
    got = {}
    for w in wheels:
        name, _, _, tags = parse_wheel_filename(w.name)
        got[name] = tags
        # cpXY-abi3 (the stable ABI, e.g. torchao's cp310-abi3) installs on any CPython >= X.Y
        assert any((t.interpreter in ("py3", "cp312") and t.abi in ("none", "cp312")
                    or t.abi == "abi3" and 30 <= int(t.interpreter[2:]) <= 312)
                   and (t.platform == "any" or (t.platform.startswith("manylinux")
                                                and t.platform.endswith("x86_64")))
                   for t in tags), w.name
    wanted = kit.wanted_packages(kit.requirement_pins(), kit.image_packages())
    assert set(wanted) <= set(got)
    assert {"rapidfuzz", "cffi", "termcolor"} <= set(got)  # needs of jiwer, soundfile, hqq
    assert not set(got) & kit.image_packages()
    bnb = next(w for w in wheels if w.name.startswith("bitsandbytes-"))
    assert bnb.stat().st_size < 15 * MIB  # slimmed to the image's CUDA build
    # they install together for python 3.12 with the machine's command; the slimmed
    # bitsandbytes still imports (its CPU library is kept)
    site = tmp_path / "site"
    plat = [a for p in kit.PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--target", str(site), "--python-version", "3.12",
                    "--implementation", "cp", "--only-binary=:all:", *plat, *map(str, wheels)],
                   check=True)
    r = subprocess.run([sys.executable, "-c", "import bitsandbytes, hqq, optimum.quanto"],
                       env=dict(os.environ, PYTHONPATH=str(site)), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]  # pure Python and bnb: any python 3 here


def test_runtime_entries_on_a_cuda_13_host_are_rows_not_crashes(monkeypatch, tmp_path,
                                                                random_model_dir):
    """`--entries runtimes` on the kit's machine (CTranslate2 sees the GPU but, a CUDA 12
    build, cannot load cuBLAS 12 there), whisper.cpp and ONNX Runtime (CPU builds): every ct2,
    whispercpp and ort entry is listed as unsupported with its reason by the real-model phase,
    the torchao int8 entries are run."""
    import ctranslate2

    from whisper_ptq.quantizers import ct2

    gpu_types = {"float32", "int8", "int8_float32", "float16", "int8_float16", "bfloat16"}
    real = ctranslate2.get_supported_compute_types
    monkeypatch.setattr(ctranslate2, "get_supported_compute_types",
                        lambda device, *a: gpu_types if device == "cuda" else real(device))
    monkeypatch.setattr(ct2, "CUDA_BLAS", "libcublas.so.12-absent")
    ct2.supported_types.cache_clear()  # answers are cached per process
    ct2.cuda_library_error.cache_clear()
    try:
        check = _module("check")
        args = check.parser().parse_args(["--model", str(random_model_dir), "--mini", ".",
                                          "--out", str(tmp_path), "--entries", "runtimes",
                                          "--budget-s", "60"])
        study = check.load(args)
        names = check.entry_names(study, args)
        libraries = {n: study.entries[n]["library"] for n in names}
        assert names[0] == "fp32" and {libraries[n] for n in names[1:]} == {
            "ct2", "torchao", "whispercpp", "ort", "openvino"} == set(check.RUNTIMES)
        assert {n for n in study.entries if study.entries[n]["library"] in check.RUNTIMES} \
            == set(names[1:])
        unsupported = [n for n in names if study.unsupported_reason(n, "cuda")]
        assert unsupported == [n for n in names
                               if libraries[n] in ("ct2", "whispercpp", "ort", "openvino")]
        res = check.Results(tmp_path, check.device_header("cpu", args))
        assert check.run_real(study, unsupported, {}, args, check.Budget(60), res) == {}
        rows = {r["entry"]: r for r in res.data["not_run"]}
        assert list(rows) == unsupported and {r["status"] for r in rows.values()} == {"unsupported"}
        assert all("libcublas.so.12-absent" in rows[n]["reason"] for n in rows if "ct2" in n)
        assert all("a CPU build of whisper.cpp" in rows[n]["reason"] for n in rows
                   if "whispercpp" in n)
        assert all("ONNX Runtime's CPU build" in rows[n]["reason"] for n in rows
                   if n.startswith("ort-"))
        md = (tmp_path / "results.md").read_text()
        assert f"| {random_model_dir.name} | ct2-bf16 | unsupported | CTranslate2 " in md
        import platform

        assert md.splitlines()[0].endswith(f"; kernel {platform.release()}")  # gVisor or not
    finally:
        ct2.supported_types.cache_clear()
        ct2.cuda_library_error.cache_clear()


def test_budget_phases_scale_to_the_phases_a_run_has():
    """A run without the random-weight shapes gives the real model all of its budget, not the
    35 % it has when both shapes follow (an H200 run skipped bnb at 132 s of 230 s for this)."""
    check = _module("check")
    full = check.Budget(1000)
    assert full.left("real") == pytest.approx(350, abs=5)
    assert full.left("whisper-large-v3") == pytest.approx(1000, abs=5)
    real_only = check.Budget(1000, ("real",))
    assert real_only.left("real") == pytest.approx(1000, abs=5)
    with_agreement = check.Budget(1000, ("real", "agreement"))
    assert with_agreement.left("real") == pytest.approx(1000 * 0.35 / 0.45, abs=5)
    assert with_agreement.left("agreement") == pytest.approx(1000, abs=5)
    small = check.Budget(1000, ("real", "agreement", "whisper-small"))
    assert small.left("whisper-small") == pytest.approx(1000, abs=5)
    assert small.left() == pytest.approx(1000, abs=5)


def test_check_turns_the_transcription_progress_bar_off():
    """The device reply keeps 12 kB of output: the check sets TQDM_DISABLE before tqdm is
    imported (tqdm reads it then), and decode's bar, left on, defers to it. Both halves
    failed once: the variable was set too late, and the bar passed disable=False."""
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('check', {str(KIT_DIR / 'check.py')!r}); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
            "from whisper_ptq.decode import progress_bar; "
            "print(progress_bar([], 'x', True).disable, progress_bar([], 'x', False).disable)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True"]
    r = subprocess.run([sys.executable, "-c", "from whisper_ptq.decode import progress_bar; "
                        "print(progress_bar([], 'x', True).disable)"], capture_output=True,
                       text=True, env={**env, "PYTHONPATH": str(REPO / "workflow")}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"  # without the check, the bar is on


def _run(date, real=(), not_run=(), synthetic=(), kit_id="k1", packages=None, model_sha=None,
         **args):
    a = {"budget_s": 100.0, "quick": False, "entries": None, "real_entries": None, "shapes": None,
         "no_real": False, "no_agreement": False, "batch_size": 16, "limit": None,
         "model": "/x/tiny.en", "tokens": 128, "step_cap_s": 20.0, "max_batch": 1024, **args}
    header = {"device": "cuda", "gpu": "G", "driver": "1", "torch": "2", "cuda": "13",
              "python": "3.12", "host": "h", "cpu_count": 2, "date_utc": date, "commit": "c",
              "kit": kit_id, "packages": packages or {"transformers": "5"}, "args": a,
              "model_sha256": model_sha,
              "gpu_memory_mib": 1}
    row = lambda e, s: {"model": "tiny.en", "entry": e, "split": s, "utterances": 1, "wer": 1.0,
                        "cer": 1.0, "rtf": 0.1, "encoder_s": 1, "decoder_s": 1,
                        "tokens_per_s": 1, "peak_alloc_mb": 1, "peak_reserved_mb": 1,
                        "quantize_s": 1, "mb_on_disk": 1}
    return {"device": header, "elapsed_s": 10.0, "agreement": None, "synthetic": list(synthetic),
            "real": [row(e, s) for e in real for s in ("test-other", "test-clean")],
            "not_run": [{"model": "tiny.en", "entry": e, "status": st, "reason": st}
                        for e, st in not_run]}


def test_merge_joins_runs_in_config_order():
    merge = _module("merge")
    order = ["fp32", "fp16", "bnb-nf4", "bnb-int8", "torch-int8-dyn"]
    first = _run("d1", real=["fp32", "fp16"],
                 not_run=[("torch-int8-dyn", "unsupported"), ("bnb-nf4", "skipped"),
                          ("bnb-int8", "skipped")])
    later = _run("d2", real=["bnb-nf4"], not_run=[("bnb-int8", "failed")],
                 entries="bnb-nf4,bnb-int8", shapes="none", budget_s=50.0)
    m = merge.merge([first, later], order)
    assert [(r["entry"], r["split"]) for r in m["real"]] == [
        (e, s) for e in ("fp32", "fp16", "bnb-nf4") for s in ("test-clean", "test-other")]
    # measured later: no longer "not measured"; a later run's word replaces an earlier one's
    assert [(r["entry"], r["status"]) for r in m["not_run"]] == [
        ("bnb-int8", "failed"), ("torch-int8-dyn", "unsupported")]
    assert m["elapsed_s"] == 20.0
    md = _module("check").markdown(m)
    assert "- run d1 UTC on h, commit c, kit k1, 10 s of a 100 s budget\n" in md
    assert "- run d2 UTC on h, commit c, kit k1, 10 s of a 50 s budget (--entries " \
           "bnb-nf4,bnb-int8 --shapes none)\n" in md


def test_merge_refuses_runs_it_cannot_put_in_one_table():
    merge = _module("merge")
    with pytest.raises(SystemExit, match="b has packages .*'6'.*, a .*'5'"):
        merge.merge([_run("d1", real=["fp32"]), _run("d2", packages={"transformers": "6"})],
                    ["fp32"], ["a", "b"])
    with pytest.raises(SystemExit, match="c has model_sha256 'w2', b 'w1'"):
        merge.merge([_run("d0"), _run("d1", real=["fp32"], model_sha="w1"),
                     _run("d2", model_sha="w2")], ["fp32"], ["a", "b", "c"])
    with pytest.raises(SystemExit, match="b's real rows have batch_size 8, a's 16"):
        merge.merge([_run("d1", real=["fp32"]), _run("d2", real=["fp16"], batch_size=8)],
                    ["fp32", "fp16"], ["a", "b"])


def test_merge_takes_another_kit_and_a_later_runs_rows():
    """A later session's kit (new id; weights recorded, the old run's not) may measure again:
    its rows replace the earlier run's, and the earlier run's line says how many it lost."""
    merge = _module("merge")
    first = _run("d1", real=["fp32", "fp16"])
    later = _run("d2", real=["fp32"], kit_id="k2", model_sha="w1")
    for r in later["real"]:
        r["wer"] = 2.0
    m = merge.merge([first, later], ["fp32", "fp16"])
    assert [(r["entry"], r["split"], r["wer"]) for r in m["real"]] == [
        ("fp32", "test-clean", 2.0), ("fp32", "test-other", 2.0),
        ("fp16", "test-clean", 1.0), ("fp16", "test-other", 1.0)]
    md = _module("check").markdown(m)
    assert "kit k1, 10 s of a 100 s budget; 2 rows replaced by a later run\n" in md
    assert "kit k2, 10 s of a 100 s budget\n" in md


def _hyps(path, texts):
    """A kept hypotheses file: three speakers, references of four words each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ref = "the cat sat down"
    path.write_text("".join(json.dumps({"id": f"{s}-{i}", "speaker": str(s), "reference": ref,
                                        "hypothesis": t}) + "\n"
                            for i, (s, t) in enumerate(zip((1, 1, 2, 3), texts))))


def test_merge_gives_dwer_against_fp32_from_another_run(tmp_path):
    """fp32 measured by one run, bnb-nf4 by a later one: merge.py pairs their kept
    hypotheses (ΔWER = 2 errors in 16 words) and the table shows the interval."""
    merge = _module("merge")
    first, later = tmp_path / "a", tmp_path / "b"
    for d, run, entry, texts in (
            (first, _run("d1", real=["fp32"]), "fp32", ["the cat sat down"] * 4),
            (later, _run("d2", real=["bnb-nf4"]), "bnb-nf4",
             ["the cat sat down", "a cat sat down", "the cat sat", "the cat sat down"])):
        for split in ("test-clean", "test-other"):
            _hyps(d / "hyps" / f"{entry}.{split}.jsonl", texts)
        (d / "results.json").write_text(json.dumps(run))
    assert merge.main(["--out", str(tmp_path / "out"), str(first), str(later)]) == 0
    d = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {(r["entry"], r["split"]): r for r in d["real"]}
    assert "dwer" not in rows[("fp32", "test-clean")]
    nf4 = rows[("bnb-nf4", "test-clean")]
    assert nf4["dwer"] == pytest.approx(100 * 2 / 16)
    assert nf4["dwer_lo"] >= 0 and nf4["dwer_hi"] > nf4["dwer"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert f"| bnb-nf4 | test-clean | 1 | 1.00 | +12.50" in md
    assert sorted(p.name for p in (tmp_path / "out" / "hyps").iterdir()) == [
        "bnb-nf4.test-clean.jsonl", "bnb-nf4.test-other.jsonl", "fp32.test-clean.jsonl",
        "fp32.test-other.jsonl"]


def test_every_plan_fits_one_command_and_names_real_entries(random_model_dir):
    """The plans the docs tell a device session to run: each parses as check.py arguments,
    names config.yaml's entries and known shapes, and fits one command (checked before any
    device time is spent)."""
    check = _module("check")
    study = check.load(check.parser().parse_args(["--model", str(random_model_dir), "--mini", ".",
                                                  "--out", "."]))
    plans = sorted(kit.PLANS.glob("*.txt"))
    assert plans
    for plan in plans:
        for label, run_args, _ in kit.read_plan(plan.stem):
            a = check.parser().parse_args(["--model", ".", "--mini", ".", "--out", ".", *run_args])
            check.entry_names(study, a)  # SystemExit on an unknown or stray entry
            assert a.shapes in (None, "none") or set(check.as_list(a.shapes)) <= set(check.SHAPES)


@pytest.mark.parametrize("text, error", [
    ("small --budget-s 60", "want 'label: check arguments'"),
    ("a: --shapes none", "name the run's --budget-s"),
    ("a: --budget-s soon", "--budget-s wants seconds"),
    ("a: --budget-s 60 --out /x", "--out is the kit's to give"),
    ("a: --budget-s 60\na: --budget-s 60", "label a is used twice"),
    ("a: --budget-s 300\nb: --budget-s 300",
     "need 630 s with 15 s each to start, more than the 540 s"),
    ("# nothing\n", "has no runs"),
])
def test_a_bad_plan_is_one_clear_error(tmp_path, text, error):
    plan = tmp_path / "p.txt"
    plan.write_text(text)
    with pytest.raises(kit.KitError, match=re.escape(error)):
        kit.read_plan(str(plan))
    with pytest.raises(kit.KitError, match="plans: large-v3, "):
        kit.read_plan("no-such-plan")
    # and from the command line: before anything is staged or run
    r = subprocess.run([sys.executable, str(KIT_DIR / "kit.py"), "run", "--plan", str(plan)],
                       capture_output=True, text=True,
                       env=dict(os.environ, WHISPER_PTQ_KIT_ROOT=str(tmp_path / "none")))
    assert r.returncode == 2 and r.stderr.startswith("gpu_kit: error: plan p.txt")


def test_a_plan_run_after_an_overrun_gets_what_is_left():
    assert kit.plan_budget(200, 0, 2, 540) == 200
    assert kit.plan_budget(200, 400, 2, 540) == 540 - 400 - 2 * kit.RUN_OVERHEAD_S
    assert kit.plan_budget(200, 480, 1, 540) is None  # 45 s left: not worth starting


def test_a_run_past_its_deadline_is_stopped_and_its_log_kept(tmp_path):
    import time

    t0 = time.monotonic()
    rc = kit.run_check([sys.executable, "-c", "import sys, time; print('started', flush=True); "
                        "time.sleep(60)"], dict(os.environ), tmp_path / "run", t0 + 2)
    assert rc is None and time.monotonic() - t0 < 30
    log = (tmp_path / "run" / "check.log").read_text()
    assert log.startswith("started") and log.endswith("stopped at the kit's deadline\n")


def test_unpack_refuses_what_it_cannot_place(tmp_path, capsys):
    import tarfile

    files, runs = tmp_path / "files", tmp_path / "runs"
    files.mkdir()
    (tmp_path / "evil").write_text("x")
    with tarfile.open(files / "a.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "evil", arcname="../evil")
    assert kit.main(["unpack", str(files), "--into", str(runs)]) == 2
    assert "a.tar.gz holds files outside a/" in capsys.readouterr().err
    (tmp_path / "a").mkdir()
    with tarfile.open(files / "a.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "a", arcname="a")
    assert kit.main(["unpack", str(files), "--into", str(runs)]) == 2
    assert "a.tar.gz has no readable a/results.json" in capsys.readouterr().err
    assert not runs.exists()


@pytest.mark.slow  # quanto's CPU kernels: built in the venv once (~30 s on 2 cores), as its tests need
def test_quanto_kernels_built_once_are_kept_and_loaded_instead_of_rebuilt(tmp_path):
    """kit.keep_builds gzips what quanto built; kit.load_prebuilt, in a fresh install of
    quanto, loads it so that nothing is compiled again. Shown with quanto's CPU extension, which
    follows the same path as its CUDA one (~140 s to build on the H200). The build kept is the
    venv's own (made by the first run below, or already by another test): a build is a build,
    and a second one would cost this suite ~30 s."""
    import optimum.quanto
    import shutil
    import torch

    def fresh_site(name):  # quanto as the kit installs it: no build folder yet
        site = tmp_path / name
        shutil.copytree(Path(optimum.quanto.__file__).parent, site / "optimum" / "quanto",
                        ignore=shutil.ignore_patterns("build", "__pycache__"))
        return site

    unpack = ("import torch, optimum.quanto\n"
              "t = torch.arange(64, dtype=torch.uint8).reshape(8, 8)\n"
              "print('unpacked', torch.ops.quanto.unpack(t, 4).sum().item())\n"
              "print('from', optimum.quanto.__file__)\n")
    env = lambda site: dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(KIT_DIR)]))
    built = Path(optimum.quanto.__file__).parents[2]  # the venv's site-packages
    r = subprocess.run([sys.executable, "-c", unpack], capture_output=True, text=True,
                       env=env(built), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"from {built}" in r.stdout
    expected = [line for line in r.stdout.splitlines() if line.startswith("unpacked")]
    (kept,) = kit.keep_builds(built, tmp_path / "out", torch.__version__, "sm90")
    assert kept.name == kit.prebuilt_name("quanto_cpp", torch.__version__, "cpu")
    assert re.fullmatch(r"quanto_cpp-[A-Za-z0-9._-]+-cpu\.so\.gz", kept.name)

    fresh = fresh_site("b")
    load = ("import sys, kit; from pathlib import Path\n"
            "print('loaded', kit.load_prebuilt(Path(sys.argv[1]), Path(sys.argv[2])))\n" + unpack)
    r = subprocess.run([sys.executable, "-c", load, str(tmp_path / "out"), str(tmp_path / "work")],
                       capture_output=True, text=True, env=env(fresh), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"loaded ['{kept.name}']" in r.stdout and f"from {fresh}" in r.stdout
    assert [line for line in r.stdout.splitlines() if line.startswith("unpacked")] == expected
    cpp = fresh / "optimum" / "quanto" / "library" / "extensions" / "cpp"
    assert not (cpp / "build").exists()  # nothing was compiled
    assert kit.keep_builds(fresh, tmp_path / "again", torch.__version__, "cpu") == []


def test_skip_entries_leaves_those_out_of_any_selection(random_model_dir):
    check = _module("check")
    base = ["--model", str(random_model_dir), "--mini", ".", "--out", "."]
    study = check.load(check.parser().parse_args(base))
    names = lambda *extra: check.entry_names(study, check.parser().parse_args(base + [*extra]))
    every = names()
    assert names("--skip-entries", "quanto-int4,quanto-int2") == [
        n for n in every if n not in ("quanto-int4", "quanto-int2")]
    assert names("--entries", "fp32,quanto-int4,bnb-nf4", "--skip-entries", "quanto-int4") == [
        "fp32", "bnb-nf4"]
    with pytest.raises(SystemExit, match="unknown entries \\['quanto-int5'\\]"):
        names("--skip-entries", "quanto-int5")
    args = check.parser().parse_args(base + ["--skip-entries", "quanto-int4"])
    assert check.run_scope(check.header_args(args)) == " (--skip-entries quanto-int4)"
