"""A full-size synthetic LibriSpeech split from the mini archives, and what the features step
and a transcribe job cost on it (issue 10).

``build`` writes ``<out>/<split>.tar.gz`` + ``<out>/md5sum.txt``, packed exactly like openslr's
archives, so the pipeline takes it with ``librispeech_url=file://<out>``. Its utterances are
the mini archive's real FLACs (bytes unchanged) and reference lines, repeated under new
chapter ids (copy k of chapter C is chapter C*10^w + k) until the split has its official
size: same 40 (test-clean) or 10 (test-other) real speakers, unique ids, real speech. The
archive is deterministic (fixed mtimes), so rebuilding gives the same md5.

``measure`` runs the CLI features step (``python -m whisper_ptq.cli features``) on the mini
and the full-size split with the code of this checkout ("after") and of an older git ref
("before", e.g. the padded float32 cache), in interleaved repeats, recording wall time,
cache bytes and the child's peak RSS (``os.wait4``); then a transcribe job (fp32, ``--limit``)
on each cache, recording its peak RSS. Results go to ``<out>/fullsize.json``.

    python benchmarks/fullsize.py build --out /tmp/ls-full --n 2620
    python benchmarks/fullsize.py measure --out /tmp/ls-full --model ~/.cache/whisper-hf/tiny.en \
        --before-ref b71148a --repeats 3 --limit 16
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

from whisper_ptq.data import extract_split, md5_of  # noqa: E402
from whisper_ptq.io import atomic_path  # noqa: E402
from whisper_ptq.steps import path_args  # noqa: E402

MINI = REPO.parent / "shared" / "data" / "librispeech-mini"
OFFICIAL_SIZE = {"test-clean": 2620, "test-other": 2939}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def read_mini(archive: Path, split: str):
    """(top-level files, {(speaker, chapter): [(utt, flac bytes, reference)]}) of an archive."""
    prefix = f"LibriSpeech/{split}/"
    extra, flacs, refs = [], {}, {}
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar:
            if not m.isfile():
                continue
            data = tar.extractfile(m).read()
            if not m.name.startswith(prefix):
                extra.append((m, data))  # LICENSE.TXT, README.TXT, SPEAKERS.TXT: kept as they are
            elif m.name.endswith(".flac"):
                flacs[Path(m.name).stem] = data
            elif m.name.endswith(".trans.txt"):
                for line in data.decode().splitlines():
                    uid, _, text = line.strip().partition(" ")
                    if uid:
                        refs[uid] = text
    chapters: dict[tuple[str, str], list] = {}
    for uid in sorted(flacs):
        spk, chap, utt = uid.split("-")
        chapters.setdefault((spk, chap), []).append((utt, flacs[uid], refs[uid]))
    return extra, chapters


def build_split(mini: Path, split: str, n: int, out: Path) -> Path:
    """``<out>/<split>.tar.gz`` with ``n`` utterances; returns its path."""
    extra, chapters = read_mini(mini / f"{split}.tar.gz", split)
    per_copy = sum(len(v) for v in chapters.values())
    copies = -(-n // per_copy)
    scale = 10 ** len(str(copies - 1))
    archive = out / f"{split}.tar.gz"

    def add(tar, name, data, like=None):
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, like.mtime if like else 1400000000
        tar.addfile(info, io.BytesIO(data))

    left = n
    with atomic_path(archive) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile("", "wb", 1, raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for m, data in extra:
            add(tar, m.name, data, m)
        for k in range(copies):
            for (spk, chap), utts in sorted(chapters.items()):
                if left <= 0:
                    break
                utts = utts[:left]
                left -= len(utts)
                new = f"{spk}-{int(chap) * scale + k}"
                folder = f"LibriSpeech/{split}/{spk}/{new.split('-')[1]}"
                for utt, flac, _ in utts:
                    add(tar, f"{folder}/{new}-{utt}.flac", flac)
                trans = "".join(f"{new}-{utt} {ref}\n" for utt, _, ref in utts)
                add(tar, f"{folder}/{new}.trans.txt", trans.encode())
    return archive


def build(out: Path, splits: list[str], n: int | None, mini: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    md5_file = out / "md5sum.txt"
    sums = {}
    if md5_file.is_file():  # keep the other splits' lines
        sums = {f: m for m, f in (line.split() for line in md5_file.read_text().splitlines() if line.strip())}
    for split in splits:
        t0 = time.perf_counter()
        archive = build_split(mini, split, n or OFFICIAL_SIZE[split], out)
        sums[archive.name] = md5_of(archive)
        print(f"{archive}: {n or OFFICIAL_SIZE[split]} utterances, {archive.stat().st_size} bytes, "
              f"md5 {sums[archive.name]} ({time.perf_counter() - t0:.1f} s)", flush=True)
    with atomic_path(md5_file) as tmp:
        tmp.write_text("".join(f"{m}  {f}\n" for f, m in sorted(sums.items())))


def run_child(cmd: list[str], env: dict, log: Path) -> dict:
    """Run ``cmd``; its wall time and peak RSS (this child alone, from wait4)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    p.returncode = code = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}); see {log}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def source_of(ref: str | None, root: Path) -> Path:
    """The ``workflow`` folder of this checkout (ref None) or of a git ref, exported once."""
    if ref is None:
        return REPO / "workflow"
    dest = root / f"src-{ref}"
    if not (dest / "workflow" / "whisper_ptq").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        tar = subprocess.run(["git", "-C", str(REPO), "archive", ref, "workflow"], check=True,
                             capture_output=True).stdout
        tarfile.open(fileobj=io.BytesIO(tar)).extractall(dest, filter="data")
    return dest / "workflow"


def step_cmd(step: str, spec: dict, input: dict, output: dict, threads: int = 1) -> list[str]:
    """``python -m whisper_ptq.cli <step>`` as the rules run it (spec + named paths)."""
    return [sys.executable, "-m", "whisper_ptq.cli", step, "--spec", json.dumps(spec),
            "--threads", str(threads), *shlex.split(path_args(input, output))]


def measure(a) -> None:
    root = a.out / "measure"
    split = a.split
    dirs = {"mini": root / "split-mini" / split, "full": root / "split-full" / split}
    archives = {"mini": a.mini / f"{split}.tar.gz", "full": a.out / f"{split}.tar.gz"}
    for size, d in dirs.items():
        if not d.is_dir():
            extract_split(archives[size], split, d)
    codes = {"before": source_of(a.before_ref, root), "after": source_of(None, root)}
    base_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(a.threads)}
    py = sys.executable
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "split": split,
               "model": str(a.model), "before_ref": a.before_ref,
               "after_commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                              capture_output=True, text=True).stdout.strip(),
               "utterances": {s: sum(1 for _ in d.rglob("*.flac")) for s, d in dirs.items()},
               "features": [], "transcribe": []}

    def cache(code, size):
        return root / "cache" / code / size / f"{split}.safetensors"

    for r in range(a.repeats):
        for code in (codes if r % 2 == 0 else list(reversed(list(codes)))):
            for size in dirs:
                out = cache(code, size)
                cmd = step_cmd("features", {"split": split},
                               {"split_dir": dirs[size], "model_dir": a.model},
                               {"tensors": out, "manifest": out.with_suffix(".manifest.jsonl")})
                if not (codes[code] / "whisper_ptq" / "steps.py").is_file():  # before issue 13
                    cmd = [py, "-m", "whisper_ptq.cli", "features", "--split-dir", str(dirs[size]),
                           "--model-dir", str(a.model), "--split", split, "--out-tensors", str(out),
                           "--out-manifest", str(out.with_suffix(".manifest.jsonl"))]
                load = loadavg()
                res = run_child(cmd, {**base_env, "PYTHONPATH": str(codes[code])},
                                root / "logs" / f"features-{code}-{size}-{r}.log")
                n = results["utterances"][size]
                res.update(repeat=r, code=code, size=size, loadavg=load, cache_bytes=out.stat().st_size,
                           bytes_per_utt=out.stat().st_size / n, ms_per_utt=1000 * res["wall_s"] / n)
                results["features"].append(res)
                print(json.dumps(res), flush=True)

    ckpt = root / "fp32"
    if not ckpt.is_dir():
        run_child(step_cmd("quantize", {"entry": "fp32", "calibration": None,
                                        "config": {"library": "fp", "scheme": "fp32"}},
                           {"model_dir": a.model}, {"checkpoint": ckpt, "meta": root / "fp32.json"}),
                  {**base_env, "PYTHONPATH": str(codes["after"])}, root / "logs" / "quantize.log")
    hyps = {}
    decoding = {"batch_size": 8, "language": "en", "task": "transcribe", "max_new_tokens": 128}
    for r in range(a.repeats):
        for code in codes:
            for size in dirs:
                feats = cache(code, size)
                out = root / "hyp" / f"{code}-{size}"
                spec = {"device": "cpu", "split": split, "shard": 0, "shards": 1,
                        "decoding": decoding, "timing": {}, "limit": a.limit, "calib_n": 0,
                        "shard_size": 0}
                cmd = step_cmd("transcribe", spec,
                               {"checkpoint": ckpt, "model_dir": a.model, "features": feats,
                                "manifest": feats.with_suffix(".manifest.jsonl")},
                               {"hyp": out / "hyp.jsonl", "timing": out / "timing.json"},
                               a.threads)
                load = loadavg()
                # transcription is the same code either way: "code" names the cache's format
                res = run_child(cmd, {**base_env, "PYTHONPATH": str(codes["after"])},
                                root / "logs" / f"transcribe-{code}-{size}-{r}.log")
                res.update(repeat=r, cache=code, size=size, loadavg=load, limit=a.limit)
                hyps[code, size] = [json.loads(line)["hypothesis"] for line in open(out / "hyp.jsonl")]
                results["transcribe"].append(res)
                print(json.dumps(res), flush=True)

    summary = {}
    for code in codes:
        for size in dirs:
            f = [x for x in results["features"] if x["code"] == code and x["size"] == size]
            t = [x for x in results["transcribe"] if x["cache"] == code and x["size"] == size]
            summary[f"{code}/{size}"] = {
                "features_wall_s_median": statistics.median(x["wall_s"] for x in f),
                "features_peak_rss_mb_max": max(x["peak_rss_mb"] for x in f),
                "cache_bytes": f[-1]["cache_bytes"], "bytes_per_utt": f[-1]["bytes_per_utt"],
                "transcribe_peak_rss_mb_max": max(x["peak_rss_mb"] for x in t),
                "transcribe_peak_rss_mb_median": statistics.median(x["peak_rss_mb"] for x in t)}
    results["same_hypotheses_before_after"] = {
        s: hyps[("before", s)] == hyps[("after", s)] for s in dirs}
    results["summary"] = summary
    (a.out / "fullsize.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"summary": summary, "same": results["same_hypotheses_before_after"]}, indent=2))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write <out>/<split>.tar.gz + md5sum.txt")
    b.add_argument("--out", type=Path, default=Path("/tmp/librispeech-fullsize"))
    b.add_argument("--split", action="append", choices=sorted(OFFICIAL_SIZE),
                   help="repeatable; default test-clean")
    b.add_argument("--n", type=int, default=None, help="utterances per split (default: official size)")
    b.add_argument("--mini", type=Path, default=MINI)
    m = sub.add_parser("measure", help="features + transcribe cost, before vs after, mini vs full")
    m.add_argument("--out", type=Path, default=Path("/tmp/librispeech-fullsize"))
    m.add_argument("--split", default="test-clean", choices=sorted(OFFICIAL_SIZE))
    m.add_argument("--model", type=Path, required=True)
    m.add_argument("--before-ref", required=True, help="git ref of the code to compare with")
    m.add_argument("--mini", type=Path, default=MINI)
    m.add_argument("--repeats", type=int, default=3)
    m.add_argument("--limit", type=int, default=16)
    m.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.out.resolve().is_relative_to(REPO):
        raise SystemExit(f"--out {a.out} is inside the repository; use a folder outside it")
    if a.cmd == "build":
        build(a.out, a.split or ["test-clean"], a.n, a.mini)
    else:
        if not (a.out / f"{a.split}.tar.gz").is_file():
            raise SystemExit(f"{a.out}/{a.split}.tar.gz is missing; run `build` first")
        measure(a)


if __name__ == "__main__":
    main()
