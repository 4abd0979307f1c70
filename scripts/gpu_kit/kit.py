"""GPU kit: carry what the GPU check needs to the lent CUDA machine, in parts, and run it there.

The device tool sends at most 64 MiB of working tree per call (the repo's own files + carried
paths), so the check's assets travel as parts of at most 60 MiB, one part per call
(docs/gpu.md gives the exact calls):

    python scripts/gpu_kit/kit.py prepare            # here (CPU, PyPI): writes .gpu_kit/part*/
    python3 scripts/gpu_kit/kit.py stage .gpu_kit/partK --then-run -- [check args]   # there

``prepare`` writes wheels for the requirements.txt packages the GPU image lacks (and what
they need), the mini LibriSpeech archives, and a real Whisper checkpoint as fp16 safetensors
split into chunks (its weights are fp16 values stored as fp32, so fp16 carries them exactly;
the original fp32 file is rebuilt byte for byte there and checked by sha256).

``stage`` copies one part into a fixed folder outside the repo (ROOT, default
/tmp/whisper-ptq-kit), checking each file's sha256; staging a part again is harmless.
With ``--then-run`` the call that completes the set verifies every checksum, rebuilds the
model, checks that a CUDA device is present, installs the wheels into ROOT/site
(``pip install --no-index --no-deps --target``) and runs scripts/gpu_kit/check.py: once,
or once per line of a plan (``--plan``: scripts/gpu_kit/plans/), each run packed as
$OUT/<label>.tar.gz (a call brings back at most 8 files); ``unpack`` puts them in place here.

Stage and run use the standard library and numpy only: the machine has no wheels yet then.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KIT = REPO / ".gpu_kit"  # ignored (.gitignore); each partK/ is carried by one call
ROOT = Path(os.environ.get("WHISPER_PTQ_KIT_ROOT", "/tmp/whisper-ptq-kit"))
MIB = 2**20
PART_LIMIT = 60 * MIB  # one part, all of its files
TREE_LIMIT = 64 * MIB  # what one call may send: the repo's own files + the carried part
TREE_MARGIN = 2 * MIB  # room for the repo to grow a little between prepare and the calls
MANIFEST = "kit.json"
PLANS = HERE / "plans"
# quanto builds its kernels on first use (its CUDA ones took ~140 s on the H200's 16 cores):
# builds a device call brought back (keep_builds) are kept here, carried, and loaded instead
PREBUILT = HERE / "prebuilt"
QUANTO_EXTENSIONS = {"quanto_cuda": "cuda", "quanto_cpp": "cpp"}  # name: its folder in quanto
# one command may run 600 s: what a plan's runs may take together, verification and install
# (~15 s) and the margin the device call's own timeout needs left over
PLAN_LIMIT_S = 540.0
RUN_OVERHEAD_S = 15.0  # per run: check.py's imports before its budget starts, its last row
# the kit gives these to every run
KIT_ARGS = ("--model", "--mini", "--out", "--work", "--prebuilt")
GRACE_S = 30.0  # past a plan run's budget and overhead before the kit stops it
SINGLE_RUN = "check"  # the label of a run without a plan
SPLITS = ("test-clean", "test-other")
# requirements.txt packages the check itself never uses on the GPU machine
# workflow / style tools, and the CPU-only runtimes (whisper.cpp, ONNX Runtime, OpenVINO) with
# the exporter and NNCF: their entries are unsupported rows there
NOT_NEEDED = {"snakemake", "snakemake-executor-plugin-slurm", "snakefmt", "pywhispercpp",
              "onnxruntime", "onnx", "onnxscript", "openvino", "nncf"}
TARGET_PYTHON = "3.12"
# pip matches manylinux tags exactly: name every glibc the image (Ubuntu 24.04, 2.39) can load
PLATFORMS = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"] + [
    f"manylinux_2_{n}_x86_64" for n in range(5, 40)]
# Native libraries of other CUDA/ROCm/XPU builds, useless on the image (torch 2.11+cu130):
# dropped from the wheel (and from its RECORD) so the kit needs one part less.
SLIM = {"bitsandbytes": r"bitsandbytes/libbitsandbytes_(cuda(?!130)\d+|rocm\d+|xpu\d+)\.so"}
MARKER_ENV = {"python_version": TARGET_PYTHON, "python_full_version": "3.12.3",
              "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
              "platform_machine": "x86_64", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "extra": ""}


class KitError(Exception):
    """One clear line for the user; never a traceback."""


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 * MIB), b""):
            h.update(block)
    return h.hexdigest()


def image_packages(path=HERE / "image-packages.txt") -> set[str]:
    lines = Path(path).read_text().splitlines()
    return {canon(x.strip()) for x in lines if x.strip() and not x.lstrip().startswith("#")}


def requirement_pins(path=REPO / "requirements.txt") -> dict[str, str]:
    """{canonical name: version} of the project's ``name==version`` pins."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*==\s*([^\s;]+)(\s*;.*)?", line)
        if not m:
            raise KitError(f"requirements.txt: cannot read {line!r} (expected name==version)")
        pins[canon(m.group(1))] = m.group(3)
    return pins


def wanted_packages(pins: dict[str, str], image: set[str]) -> dict[str, str]:
    """The pinned packages the GPU check needs and the image lacks."""
    return {n: v for n, v in pins.items() if n not in image and n not in NOT_NEEDED}


# ---------------------------------------------------------------------------------------
# prepare (here)


def wheel_requires(wheel: Path) -> list[str]:
    """Requires-Dist lines of a wheel that apply on the GPU machine (no extras)."""
    import zipfile

    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    out = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(MARKER_ENV):
                out.append(str(req))
    return out


def _pip(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          cwd=cwd)


def download_wheel(name: str, version: str, dest: Path) -> Path:
    """One wheel for cp312 / manylinux x86-64; a pure-Python sdist is built into one."""
    before = set(dest.glob("*.whl"))
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    r = _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", TARGET_PYTHON,
             "--implementation", "cp", *plat, "-d", str(dest), f"{name}=={version}")
    if r.returncode != 0:  # no wheel on the index (hqq): build it, if it is pure Python
        with_tmp = dest / f".build-{name}"
        r2 = _pip("wheel", "--no-deps", "--no-binary", name, "-w", str(with_tmp),
                  f"{name}=={version}")
        built = list(with_tmp.glob("*.whl")) if r2.returncode == 0 else []
        if not built or not built[0].name.endswith("-py3-none-any.whl"):
            tail = (r.stderr.strip().splitlines() or ["?"])[-1]
            raise KitError(f"no cp{TARGET_PYTHON.replace('.', '')} manylinux x86-64 wheel for "
                           f"{name}=={version} ({tail}) and no pure-Python build of it")
        shutil.move(str(built[0]), dest / built[0].name)
        shutil.rmtree(with_tmp)
    new = set(dest.glob("*.whl")) - before
    if len(new) != 1:
        raise KitError(f"pip download of {name}=={version} gave {len(new)} wheels")
    return new.pop()


def slim_wheel(wheel: Path, pattern: str) -> list[str]:
    """Rewrite ``wheel`` without the members matching ``pattern``; returns what was dropped."""
    import zipfile

    drop = re.compile(pattern)
    tmp = wheel.with_name(wheel.name + ".tmp")
    dropped = []
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if drop.fullmatch(info.filename):
                dropped.append(info.filename)
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if not drop.fullmatch(line.split(",", 1)[0])).encode()
            out.writestr(info, data)
    os.replace(tmp, wheel)
    return dropped


def resolve_wheels(pins: dict[str, str], image: set[str], dest: Path, log=print) -> list[Path]:
    """Download the wanted pins and, recursively, every requirement the image lacks.

    A requirement not pinned in requirements.txt takes the version installed here (this venv
    passes ``pip check``), so the kit is as reproducible as the venv.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    dest.mkdir(parents=True, exist_ok=True)
    todo = list(wanted_packages(pins, image).items())
    done: dict[str, Path] = {}
    while todo:
        name, version = todo.pop(0)
        if name in done:
            continue
        wheel = download_wheel(name, version, dest)
        done[name] = wheel
        slimmed = ""
        if name in SLIM:
            before = wheel.stat().st_size
            dropped = slim_wheel(wheel, SLIM[name])
            slimmed = (f", slimmed from {before / MIB:.1f} MiB: {len(dropped)} libraries of "
                       "other CUDA/ROCm/XPU builds left out")
        log(f"  wheel {wheel.name} ({wheel.stat().st_size / MIB:.1f} MiB{slimmed})")
        for line in wheel_requires(wheel):
            req = Requirement(line)
            dep = canon(req.name)
            if dep in image or dep in done or dep in NOT_NEEDED:
                continue
            ver = pins.get(dep)
            if ver is None:
                try:
                    ver = metadata.version(dep)
                except metadata.PackageNotFoundError:
                    raise KitError(f"{name} needs {line}, which the GPU image lacks and which is "
                                   f"neither pinned in requirements.txt nor installed here: pin it")
            if not req.specifier.contains(ver, prereleases=True):
                raise KitError(f"{name} needs {line} but the version at hand is {dep}=={ver}")
            todo.append((dep, ver))
    return sorted(done.values())


def read_safetensors_header(path) -> tuple[bytes, dict]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
    return raw, json.loads(raw)


def tensor_order(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"),
                  key=lambda k: header[k]["data_offsets"][0])


def fp32_to_fp16(src: Path, dest: Path) -> dict:
    """Write ``src`` (fp32 safetensors) as an fp16 safetensors file, refusing any tensor whose
    values fp16 cannot hold exactly. Returns how to rebuild ``src`` byte for byte."""
    import numpy as np

    raw, header = read_safetensors_header(src)
    names = tensor_order(header)
    data_start = 8 + len(raw)
    out_header, pos = {}, 0
    for k in names:
        if header[k]["dtype"] != "F32":
            raise KitError(f"{src}: tensor {k} is {header[k]['dtype']}, not F32")
        n = header[k]["data_offsets"][1] - header[k]["data_offsets"][0]
        out_header[k] = {"dtype": "F16", "shape": header[k]["shape"],
                         "data_offsets": [pos, pos + n // 2]}
        pos += n // 2
    expected = 0
    for k in names:  # the data must be one contiguous run, in this order
        a, b = header[k]["data_offsets"]
        if a != expected:
            raise KitError(f"{src}: tensor data is not contiguous at {k}")
        expected = b
    if data_start + expected != src.stat().st_size:
        raise KitError(f"{src}: file size does not match its header")
    hjson = json.dumps(out_header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    with open(src, "rb") as f, open(dest, "wb") as out:
        out.write(struct.pack("<Q", len(hjson)) + hjson)
        f.seek(data_start)
        for k in names:
            a, b = header[k]["data_offsets"]
            x = np.frombuffer(f.read(b - a), dtype="<f4")
            h = x.astype("<f2")
            if not np.array_equal(h.astype("<f4").view("<u4"), x.view("<u4")):
                bad = int(np.sum(h.astype("<f4").view("<u4") != x.view("<u4")))
                raise KitError(f"{src}: tensor {k} is not exactly representable in fp16 "
                               f"({bad} values differ); this kit carries fp16-exact weights only")
            out.write(h.tobytes())
    return {"header_hex": raw.hex(), "names": names}


def fp16_to_fp32(fp16: Path, rebuild: dict, dest: Path) -> None:
    """Rebuild the original fp32 file from the fp16 one and the original header."""
    import numpy as np

    raw = bytes.fromhex(rebuild["header_hex"])
    _, h16 = read_safetensors_header(fp16)
    start16 = 8 + struct.unpack("<Q", open(fp16, "rb").read(8))[0]
    tmp = dest.with_name(dest.name + ".tmp")
    with open(fp16, "rb") as f, open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for k in rebuild["names"]:
            a, b = h16[k]["data_offsets"]
            f.seek(start16 + a)
            out.write(np.frombuffer(f.read(b - a), dtype="<f2").astype("<f4").tobytes())
    os.replace(tmp, dest)


def tree_bytes(repo=REPO) -> int:
    """Bytes of what a device call sends besides the carried part: tracked and untracked
    files that git does not ignore."""
    r = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=repo,
                       capture_output=True)
    if r.returncode != 0:
        raise KitError(f"{repo} is not a git checkout: cannot size what a device call sends")
    total = 0
    for rel in r.stdout.decode().split("\0"):
        p = Path(repo) / rel
        if rel and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def git_commit(repo=REPO) -> str | None:
    """HEAD of the checkout the kit was prepared in (+ '-dirty'): the machine has no .git."""
    r = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=repo,
                       capture_output=True, text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


def pack(items: list[dict], chunked: dict, cap: int) -> list[list[dict]]:
    """Items (whole files, biggest first, first fit) then ``chunked`` (one file cut into
    chunks filling the gaps) into parts of at most ``cap`` bytes each."""
    parts: list[list[dict]] = []
    room: list[int] = []
    for it in sorted(items, key=lambda i: -i["bytes"]):
        if it["bytes"] > cap:
            raise KitError(f"{it['name']} is {it['bytes'] / MIB:.1f} MiB, more than one part "
                           f"may hold ({cap / MIB:.1f} MiB)")
        k = next((i for i, r in enumerate(room) if r >= it["bytes"]), None)
        if k is None:
            parts.append([])
            room.append(cap)
            k = len(parts) - 1
        parts[k].append(it)
        room[k] -= it["bytes"]
    offset, size, i = 0, chunked["bytes"], 0
    while offset < size:
        if i == len(parts):
            parts.append([])
            room.append(cap)
        take = min(room[i], size - offset)
        if take >= MIB or take == size - offset:
            n = sum(1 for p in parts for it in p if it.get("chunk_of"))
            parts[i].append({"name": f"{chunked['name']}.{n:03d}", "kind": "chunk",
                             "chunk_of": chunked["name"], "offset": offset, "bytes": take})
            room[i] -= take
            offset += take
        i += 1
    return parts


def prepare(a) -> int:
    out = Path(a.out)
    model = Path(a.model).expanduser()
    mini = Path(a.mini)
    for need in [model / "model.safetensors", model / "config.json"] + [
            mini / f"{s}.tar.gz" for s in SPLITS]:
        if not need.is_file():
            raise KitError(f"prepare: {need} is missing (real checkpoints: ../shared/tools/"
                           "real_whisper.py tiny.en DIR; archives: ../shared/data/librispeech-mini)")
    if out.exists():
        shutil.rmtree(out)
    build = out / "build"
    build.mkdir(parents=True)
    files: list[dict] = []

    def add(path: Path, kind: str, name: str | None = None):
        files.append({"name": name or path.name, "kind": kind, "src": str(path),
                      "bytes": path.stat().st_size})

    wheels = []
    if not a.skip_wheels:
        print("wheels (requirements.txt minus scripts/gpu_kit/image-packages.txt):")
        wheels = resolve_wheels(requirement_pins(), image_packages(), build / "wheels")
    for w in wheels:
        add(w, "wheel")
    for p in sorted(PREBUILT.glob("*.so.gz")):
        add(p, "prebuilt")
    for s in SPLITS:
        add(mini / f"{s}.tar.gz", "mini")
    if (mini / "md5sum.txt").is_file():
        add(mini / "md5sum.txt", "mini")
    for p in sorted(model.iterdir()):
        if p.is_file() and p.name != "model.safetensors":
            add(p, "model")
    fp16 = build / f"{a.model_name}.fp16.safetensors"
    rebuild = fp32_to_fp16(model / "model.safetensors", fp16)
    weights = {"name": fp16.name, "bytes": fp16.stat().st_size, "sha256": sha256_of(fp16),
               "fp32_sha256": sha256_of(model / "model.safetensors"),
               "fp32_bytes": (model / "model.safetensors").stat().st_size, **rebuild}
    tree = tree_bytes()
    cap = min(PART_LIMIT, TREE_LIMIT - tree - TREE_MARGIN) - 256 * 1024  # room for the manifest
    if cap < 8 * MIB:
        raise KitError(f"the repo's own files take {tree / MIB:.1f} MiB of the 64 MiB a device "
                       "call may send: too little room for kit parts")
    parts = pack(files, weights, cap)
    for k, part in enumerate(parts, 1):
        for it in part:
            it["part"] = k
    entries = [it for part in parts for it in part]
    for it in entries:  # copy or cut, then hash what will travel
        dest_dir = out / f"part{it['part']}"
        dest_dir.mkdir(exist_ok=True)
        dest = dest_dir / it["name"]
        if it["kind"] == "chunk":
            with open(fp16, "rb") as f:
                f.seek(it["offset"])
                dest.write_bytes(f.read(it["bytes"]))
        else:
            shutil.copyfile(it.pop("src"), dest)
        it["sha256"] = sha256_of(dest)
    manifest = {"format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "commit": git_commit(),
                "parts": len(parts), "model_name": a.model_name, "tree_bytes": tree,
                "files": entries, "weights": weights}
    manifest["kit_id"] = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]
    for k in range(1, len(parts) + 1):
        (out / f"part{k}" / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(build)
    print(f"kit {manifest['kit_id']}: {len(parts)} parts in {out} (repo files {tree / MIB:.1f} MiB "
          f"travel with each call)")
    rel = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    for k in range(1, len(parts) + 1):
        size = dir_bytes(out / f"part{k}")
        print(f"  part{k}: {size / MIB:.1f} MiB -> run(command='python3 scripts/gpu_kit/kit.py "
              f"stage {rel}/part{k} --then-run --plan PLAN', carry=['{rel}/part{k}'], "
              "timeout_s=590)")
    print(f"PLAN: one of {', '.join(plan_names())} (docs/results/gpu/README.md says which, by GPU); without "
          "--plan the call runs the whole check once")
    return 0


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


# ---------------------------------------------------------------------------------------
# stage / run (there)


def load_manifest(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise KitError(f"cannot read the kit manifest {path}: {e}")


def present(manifest: dict, root: Path, check_sha: bool) -> dict[int, list[str]]:
    """{part: names missing or damaged in root/files} for every part of the kit."""
    bad: dict[int, list[str]] = {}
    for it in manifest["files"]:
        p = root / "files" / it["name"]
        ok = p.is_file() and p.stat().st_size == it["bytes"]
        if ok and check_sha:
            ok = sha256_of(p) == it["sha256"]
        if not ok:
            bad.setdefault(it["part"], []).append(it["name"])
    return bad


def stage(a) -> int:
    part_dir = Path(a.part)
    if not part_dir.is_absolute():
        part_dir = REPO / part_dir
    if not (part_dir / MANIFEST).is_file():
        raise KitError(f"{part_dir} holds no {MANIFEST}: name the part in the call's carry "
                       f"(run prepare here first)")
    manifest = load_manifest(part_dir / MANIFEST)
    k = int(part_dir.name.removeprefix("part"))
    root = ROOT
    old = root / MANIFEST
    if old.is_file() and load_manifest(old).get("kit_id") != manifest["kit_id"]:
        print(f"gpu_kit: {root} held another kit; starting over", flush=True)
        shutil.rmtree(root)
    (root / "files").mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    copied = 0
    for it in manifest["files"]:
        if it["part"] != k:
            continue
        dest = root / "files" / it["name"]
        if dest.is_file() and dest.stat().st_size == it["bytes"] and sha256_of(dest) == it["sha256"]:
            continue  # staged before
        src = part_dir / it["name"]
        if not src.is_file() or sha256_of(src) != it["sha256"]:
            raise KitError(f"part{k}: {it['name']} is missing or damaged in {part_dir}; "
                           "run prepare again here")
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        copied += it["bytes"]
    missing = sorted(present(manifest, root, check_sha=False))
    have = [p for p in range(1, manifest["parts"] + 1) if p not in missing]
    print(f"gpu_kit: part{k}/{manifest['parts']} staged in {root} ({copied / MIB:.1f} MiB copied); "
          f"parts present {have}; missing {missing or 'none'}", flush=True)
    if a.then_run:
        if missing:
            print(f"gpu_kit: not running yet: stage part{missing[0]} next", flush=True)
            return 0
        return run(a)
    return 0


def check_cuda(check_args: list[str]) -> str:
    """The device line's start, or KitError when no CUDA device answers (no traceback)."""
    if "--device" in check_args and check_args[check_args.index("--device") + 1:][:1] == ["cpu"]:
        return "cpu (dry run)"
    try:
        import torch
    except ImportError:
        raise KitError("no CUDA device: python3 here has no torch")
    if not torch.cuda.is_available():
        raise KitError(f"no CUDA device (torch {torch.__version__}, CUDA build "
                       f"{torch.version.cuda or 'none'}): run this on the GPU machine; "
                       "the staged files are complete and verified")
    return torch.cuda.get_device_name(0)


def cuda_arch() -> str:
    """The compute capability of GPU 0 as TORCH_CUDA_ARCH_LIST wants it ('9.0'), or ''."""
    try:
        import torch

        if torch.cuda.is_available():
            return "{}.{}".format(*torch.cuda.get_device_capability(0))
    except ImportError:
        pass
    return ""


def torch_build() -> tuple[str, str]:
    """(torch version, GPU architecture as 'sm90', or 'cpu'): what a quanto build is for."""
    import torch

    arch = cuda_arch()
    return torch.__version__, f"sm{arch.replace('.', '')}" if arch else "cpu"


def prebuilt_name(extension: str, torch_version: str, arch: str) -> str:
    """e.g. quanto_cuda-2.11.0_cu130-sm90.so.gz (a device call brings back only names of
    letters, digits, '.', '_' and '-'); quanto's CPU kernels are 'cpu' whatever the GPU."""
    if QUANTO_EXTENSIONS[extension] == "cpp":
        arch = "cpu"
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{extension}-{torch_version}-{arch}") + ".so.gz"


def keep_builds(site: Path, out: Path, torch_version: str, arch: str) -> list[Path]:
    """The kernels quanto built during this call, gzipped into out/: commit them to
    scripts/gpu_kit/prebuilt/ and later kits carry them. A build loaded from the kit left no
    build folder, so nothing is kept twice."""
    kept = []
    for ext, folder in QUANTO_EXTENSIONS.items():
        so = site / "optimum" / "quanto" / "library" / "extensions" / folder / "build" / f"{ext}.so"
        if so.is_file():
            dest = out / prebuilt_name(ext, torch_version, arch)
            out.mkdir(parents=True, exist_ok=True)
            with open(so, "rb") as f, gzip.open(dest, "wb") as g:
                shutil.copyfileobj(f, g)
            kept.append(dest)
    return kept


def load_prebuilt(folder: Path | None, work: Path) -> list[str]:
    """quanto's kernels from an earlier build for this torch and GPU (keep_builds), set as its
    extensions' libraries so that it does not build them again (called by check.py, where
    quanto is installed); each one that is missing or does not load is built by quanto on
    first use, as without a kit."""
    import importlib.util

    if folder is None:
        return []
    try:
        from optimum.quanto.library.extensions import get_extension
    except ImportError:
        return []
    version, arch = torch_build()
    loaded = []
    for ext in QUANTO_EXTENSIONS:
        gz = Path(folder) / prebuilt_name(ext, version, arch)
        if not gz.is_file():
            continue
        try:
            extension = get_extension(ext)  # KeyError: quanto registers CUDA's only with CUDA
            so = Path(work) / "prebuilt" / f"{ext}.so"
            so.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(gz, "rb") as g, open(so, "wb") as f:
                shutil.copyfileobj(g, f)
            spec = importlib.util.spec_from_file_location(ext, so)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            extension._lib = module
            loaded.append(gz.name)
        except Exception as e:  # noqa: BLE001  (quanto builds it instead)
            print(f"prebuilt {gz.name} not loaded, quanto builds it: {type(e).__name__}: {e}",
                  flush=True)
    return loaded


def install_wheels(manifest: dict, root: Path) -> Path:
    site = root / "site"
    wheels = [root / "files" / it["name"] for it in manifest["files"] if it["kind"] == "wheel"]
    stamp = site / ".kit_id"
    if stamp.is_file() and stamp.read_text() == manifest["kit_id"]:
        return site
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    if wheels:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                            "--no-deps", "--no-compile", "--no-cache-dir", "--target", str(site),
                            *map(str, wheels)], capture_output=True, text=True)
        if r.returncode != 0:
            raise KitError("pip install of the kit's wheels failed: "
                           + " | ".join(r.stderr.strip().splitlines()[-3:]))
        print(f"gpu_kit: {len(wheels)} wheels installed into {site} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    stamp.write_text(manifest["kit_id"])
    return site


def assemble_model(manifest: dict, root: Path) -> Path:
    """root/model/<name>/: the checkpoint's small files and its fp32 weights rebuilt from the
    fp16 chunks, byte-identical to the original (sha256 checked)."""
    w = manifest["weights"]
    model = root / "model" / manifest["model_name"]
    model.mkdir(parents=True, exist_ok=True)
    target = model / "model.safetensors"
    if target.is_file() and target.stat().st_size == w["fp32_bytes"] \
            and sha256_of(target) == w["fp32_sha256"]:
        return model
    for it in manifest["files"]:
        if it["kind"] == "model":
            shutil.copyfile(root / "files" / it["name"], model / it["name"])
    fp16 = root / w["name"]
    with open(fp16, "wb") as out:
        for it in sorted((i for i in manifest["files"] if i["kind"] == "chunk"),
                         key=lambda i: i["offset"]):
            out.write((root / "files" / it["name"]).read_bytes())
    if sha256_of(fp16) != w["sha256"]:
        raise KitError(f"reassembled {fp16.name} does not match its sha256")
    fp16_to_fp32(fp16, w, target)
    if sha256_of(target) != w["fp32_sha256"]:
        raise KitError(f"rebuilt {target} differs from the original fp32 weights (sha256)")
    fp16.unlink()
    return model


def plan_names() -> list[str]:
    return sorted(p.stem for p in PLANS.glob("*.txt"))


def read_plan(name: str, limit_s: float = PLAN_LIMIT_S) -> list[tuple[str, list[str], float]]:
    """A plan: `label: check.py arguments` per line (# comments), each with its --budget-s;
    the runs' budgets and overheads must fit in limit_s. Checked before anything runs.
    Returns (label, arguments, budget) per run: the budget out of the arguments, since the
    kit gives each run its own (plan_budget)."""
    path = Path(name) if name.endswith(".txt") or "/" in name else PLANS / f"{name}.txt"
    if not path.is_file():
        raise KitError(f"plan {name}: no {path} (plans: {', '.join(plan_names())})")
    runs, total = [], 0.0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        label, sep, rest = line.partition(":")
        args = rest.split()
        where = f"plan {path.name} line {n}"
        if not sep or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", label.strip()):
            raise KitError(f"{where}: want 'label: check arguments' (label: a-z, 0-9, -)")
        label = label.strip()
        if label in (r[0] for r in runs):
            raise KitError(f"{where}: label {label} is used twice")
        taken = [x for x in args if x.split("=")[0] in KIT_ARGS]
        if taken:
            raise KitError(f"{where}: {taken[0]} is the kit's to give")
        if "--budget-s" not in args[:-1]:
            raise KitError(f"{where}: name the run's --budget-s")
        i = args.index("--budget-s")
        try:
            budget = float(args[i + 1])
        except ValueError:
            raise KitError(f"{where}: --budget-s wants seconds")
        del args[i:i + 2]
        total += budget + RUN_OVERHEAD_S
        runs.append((label, args, budget))
    if not runs:
        raise KitError(f"plan {path.name} has no runs")
    if total > limit_s:
        raise KitError(f"plan {path.name}: its runs need {total:.0f} s with {RUN_OVERHEAD_S:.0f} "
                       f"s each to start, more than the {limit_s:.0f} s one command may take")
    return runs


def plan_budget(own: float, elapsed: float, runs_left: int, limit_s: float) -> float | None:
    """A plan run's budget: its own, or less when an earlier run overran (the later runs keep
    their overheads); None when under a minute would be left to it."""
    budget = min(own, limit_s - elapsed - RUN_OVERHEAD_S * runs_left)
    return budget if budget >= 60 else None


def run_check(cmd: list[str], env: dict, out: Path, deadline: float) -> int | None:
    """check.py into out/, its output into out/check.log and, trimmed, into the reply; stopped
    at `deadline` (time.monotonic()) so that the kit can still pack what it wrote (the check
    rewrites its tables after every row). None when it was stopped."""
    import threading

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with open(out / "check.log", "w") as log:
        p = subprocess.Popen(cmd + ["--out", str(out)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, cwd=REPO)
        stopped = threading.Event()

        def stop():
            stopped.set()
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

        timer = threading.Timer(max(0.0, deadline - time.monotonic()), stop)
        timer.start()
        try:
            for line in p.stdout:
                log.write(line)
                log.flush()
                # the reply keeps only the output's last 12 kB: progress bars keep their last
                # state
                sys.stdout.write(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\n") else line)
                sys.stdout.flush()
            rc = p.wait()
        finally:
            timer.cancel()
        if stopped.is_set():
            log.write("gpu_kit: stopped at the kit's deadline\n")
    return None if stopped.is_set() else rc


def pack_run(run_dir: Path, dest: Path) -> Path:
    """One run's folder as dest/<label>.tar.gz: what comes back from $OUT is at most 8 files,
    and a run leaves results.md, results.json, check.log and a hypotheses file per real row."""
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{run_dir.name}.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(run_dir, arcname=run_dir.name)
    os.replace(tmp, dest / f"{run_dir.name}.tar.gz")
    return dest / f"{run_dir.name}.tar.gz"


def run(a) -> int:
    plan = getattr(a, "plan_runs", None)  # read and checked by main()
    root = ROOT
    manifest = load_manifest(root / MANIFEST) if (root / MANIFEST).is_file() else None
    if manifest is None:
        raise KitError(f"nothing staged in {root}: the machine was probably given back between "
                       "calls; stage every part again (docs/gpu.md)")
    bad = present(manifest, root, check_sha=True)
    if bad:
        raise KitError(f"parts missing or damaged in {root}: "
                       f"{', '.join(f'part{k}' for k in sorted(bad))}; stage them again "
                       "(the machine was probably given back between calls)")
    model = assemble_model(manifest, root)
    print(f"gpu_kit: all {len(manifest['files'])} files verified (sha256); {model} rebuilt "
          "byte-identical", flush=True)
    device = check_cuda(a.check_args)
    print(f"gpu_kit: device {device}", flush=True)
    site = install_wheels(manifest, root)
    out = Path(os.environ.get("OUT") or root / "out")
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", WHISPER_PTQ_KIT_ID=manifest["kit_id"],
               # quanto builds its CUDA kernels on first use (nvcc, ninja): for this GPU only
               TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST") or cuda_arch(),
               MAX_JOBS=os.environ.get("MAX_JOBS") or str(os.cpu_count() or 4),
               WHISPER_PTQ_KIT_COMMIT=manifest.get("commit") or "",
               WHISPER_PTQ_MODEL_SHA256=manifest["weights"]["fp32_sha256"],
               PYTHONPATH=os.pathsep.join(filter(None, [str(site), str(REPO / "workflow"),
                                                        os.environ.get("PYTHONPATH")])))
    env = {k: v for k, v in env.items() if v != ""}  # no arch list on a CPU dry run
    cmd = [sys.executable, str(HERE / "check.py"), "--model", str(model),
           "--mini", str(root / "files"), "--work", str(root / "work"),
           "--prebuilt", str(root / "files")]
    t0, rcs, codes = time.monotonic(), {}, []
    for k, (label, args, own) in enumerate(plan or [(SINGLE_RUN, [], None)]):
        args, end, run_dir = args + a.check_args, t0 + a.limit_s, root / "runs" / label
        if plan:
            budget = plan_budget(own, time.monotonic() - t0, len(plan) - k, a.limit_s)
            if budget is None:
                print(f"gpu_kit: plan run {label} skipped: too little of {a.limit_s:.0f} s left",
                      flush=True)
                rcs[label] = "skipped"
                continue
            args += ["--budget-s", f"{budget:.0f}"]
            print(f"gpu_kit: plan run {k + 1}/{len(plan)} {label}: {' '.join(args)}", flush=True)
            end = min(end, time.monotonic() + budget + RUN_OVERHEAD_S + GRACE_S)
        rc = run_check(cmd + args, env, run_dir, end)
        codes.append(1 if rc is None else rc)
        rcs[label] = "stopped at its deadline" if rc is None else f"exit {rc}"
        md = run_dir / "results.md"
        if md.is_file():  # the tables in the reply too, should the files not come back
            print("\n" + md.read_text(), flush=True)
        print(f"gpu_kit: {label}: {rcs[label]}; {pack_run(run_dir, out)}", flush=True)
    for kept in keep_builds(site, out, *torch_build()):
        print(f"gpu_kit: quanto's kernels built here are in {kept} "
              f"({kept.stat().st_size / MIB:.1f} MiB): commit it to scripts/gpu_kit/prebuilt/",
              flush=True)
    if plan:
        print("gpu_kit: plan done: " + ", ".join(f"{lb} {st}" for lb, st in rcs.items())
              + f" ({time.monotonic() - t0:.0f} s)", flush=True)
    return next((c for c in codes if c), 0)


def unpack(a) -> int:
    """Each <label>.tar.gz a device call brought back, into RUNS/<UTC date-time>-<label>/
    (the date from its results.json), where merge.py reads the runs of one GPU. Every file is
    checked before any is unpacked."""
    import tarfile

    src, runs = Path(a.files), Path(a.into)
    tars = sorted(src.glob("*.tar.gz"))
    if not tars:
        raise KitError(f"unpack: no .tar.gz in {src}")
    places = []
    for t in tars:
        label = t.name.removesuffix(".tar.gz")
        with tarfile.open(t) as tar:
            if any(not (n == label or n.startswith(label + "/")) or ".." in Path(n).parts
                   for n in tar.getnames()):
                raise KitError(f"unpack: {t.name} holds files outside {label}/")
            try:
                head = json.load(tar.extractfile(f"{label}/results.json"))["device"]
            except (KeyError, ValueError) as e:
                raise KitError(f"unpack: {t.name} has no readable {label}/results.json ({e}): "
                               "its check.log says why; nothing was unpacked")
        dest = runs / f"{head['date_utc'].replace(' ', 'T').replace(':', '')}-{label}"
        if dest.exists():
            raise KitError(f"unpack: {dest} exists already; nothing was unpacked")
        places.append((t, label, dest))
    runs.mkdir(parents=True, exist_ok=True)
    for t, label, dest in places:
        tmp = runs / f".{dest.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(t) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp / label, dest)
        tmp.rmdir()
        print(f"gpu_kit: {t.name} -> {dest}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="here: write the parts into .gpu_kit/")
    pp.add_argument("--out", default=str(KIT))
    pp.add_argument("--model", default="~/.cache/whisper-hf/tiny.en",
                    help="a real Whisper checkpoint whose fp32 weights are fp16-exact")
    pp.add_argument("--model-name", default="tiny.en")
    pp.add_argument("--mini", default=str(REPO.parent / "shared" / "data" / "librispeech-mini"))
    pp.add_argument("--skip-wheels", action="store_true", help="no wheels (tests)")
    ps = sub.add_parser("stage", help="there: unpack one part into ROOT (idempotent)")
    ps.add_argument("part", help="the carried part folder, e.g. .gpu_kit/part1")
    ps.add_argument("--then-run", action="store_true",
                    help="once every part is staged, verify, install and run the check")
    pr = sub.add_parser("run", help="there: verify, install and run the check")
    for q in (ps, pr):
        q.add_argument("--plan", help="run each line of scripts/gpu_kit/plans/PLAN.txt (or a "
                                      "file) as its own check, into $OUT/<label>.tar.gz")
        q.add_argument("--limit-s", type=float, default=PLAN_LIMIT_S,
                       help="what a plan's runs may take together")
    pu = sub.add_parser("unpack", help="here: a device call's <label>.tar.gz files into "
                                       "RUNS/<date-time>-<label>/")
    pu.add_argument("files", help="the reply's files_at")
    pu.add_argument("--into", required=True, help="e.g. docs/results/gpu/h100/runs")
    p.epilog = "stage/run: arguments after -- go to check.py (--quick, --budget-s ...)"
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    a = parser().parse_args(argv[:cut])
    a.check_args = argv[cut + 1:]
    try:
        # a bad plan fails the first call, not the one that runs
        a.plan_runs = read_plan(a.plan, a.limit_s) if getattr(a, "plan", None) else None
        return {"prepare": prepare, "stage": stage, "run": run, "unpack": unpack}[a.cmd](a)
    except KitError as e:
        print(f"gpu_kit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
