"""The full-size synthetic split through Snakemake with shards (issue 10, item 5): watch a
run's jobs, then gather what they cost into one JSON (benchmarks/README.md, "Full-size run
through Snakemake (shards)").

``monitor RUN_DIR OUT.json`` polls /proc once a second until ``OUT.json.stop`` exists: for
every process whose working directory is RUN_DIR and whose command line runs
``whisper_ptq.cli``, its peak RSS (``VmHWM``, the kernel's own high-water mark, so a poll
that misses the peak moment still reads it), its CPU seconds (utime + stime: on a shared
machine a job's timed seconds are wall-clock, its CPU seconds what a free core would need)
and first/last time seen; every 15 s the load
average. It changes nothing in the package: jobs are watched from outside.

``collect RUN_DIR --monitor OUT.json --log SNAKEMAKE.log --out RESULT.json`` joins that with
the Snakemake log (jobs, their rules and start/finish times), the shard timing files
(utterances, audio, encoder/decoder seconds, RTF, peak RSS as the job itself recorded it), the
feature cache (bytes, utterances), the score file and ``/usr/bin/time -v``'s lines.

    python benchmarks/fullsize_run.py monitor /tmp/i10-snake-run /tmp/i10-mon.json &
    (cd /tmp/i10-snake-run && /usr/bin/time -v snakemake --cores 2 ... > run.log 2>&1)
    touch /tmp/i10-mon.json.stop
    python benchmarks/fullsize_run.py collect /tmp/i10-snake-run --monitor /tmp/i10-mon.json \
        --log run.log --out benchmarks/fullsize-snakemake.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path


def _write(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def monitor(run_dir: Path, out: Path, every: float = 1.0) -> None:
    run_dir = run_dir.resolve()
    stop = out.with_name(out.name + ".stop")
    procs: dict[str, dict] = {}
    loads: list = []
    t0, n = time.time(), 0
    while not stop.exists():
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/cwd").resolve() != run_dir:
                    continue
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "whisper_ptq.cli" not in cmd or cmd.startswith(("/usr/bin/bash", "bash")):
                    continue
                status = Path(f"/proc/{pid}/status").read_text()
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone, or not ours to read
            hwm = next((int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM")), 0)
            p = procs.setdefault(pid, {"pid": int(pid), "cmd": cmd[:600], "first": time.time(),
                                       "hwm_kb": 0})
            p["last"] = time.time()
            p["hwm_kb"] = max(p["hwm_kb"], hwm)
            # utime + stime (fields 14, 15 of /proc/PID/stat): CPU seconds used so far
            p["cpu_s"] = (int(stat[11]) + int(stat[12])) / CLK_TCK
        if n % int(15 / every) == 0:
            loads.append([round(time.time() - t0, 1)] + Path("/proc/loadavg").read_text().split()[:3])
            _write(out, {"t0": t0, "procs": list(procs.values()), "loadavg": loads})
        n += 1
        time.sleep(every)
    _write(out, {"t0": t0, "procs": list(procs.values()), "loadavg": loads})


STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def parse_log(text: str) -> list[dict]:
    """Jobs of a Snakemake log: rule, jobid, wildcards, start and finish (epoch seconds)."""
    jobs: dict[int, dict] = {}
    stamp, current = None, None
    for line in text.splitlines():
        m = STAMP.match(line.strip())
        if m:
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y").replace(
                tzinfo=timezone.utc).timestamp()
            continue
        s = line.strip()
        m = re.match(r"^(?:local)?(rule|checkpoint) (\w+):$", s)
        if m:
            current = {"rule": m.group(2), "start": stamp}
            continue
        if current is not None and s.startswith("jobid:"):
            current["jobid"] = int(s.split()[1])
            jobs[current["jobid"]] = current
        elif current is not None and s.startswith("wildcards:"):
            current["wildcards"] = dict(kv.split("=", 1) for kv in s[len("wildcards:"):].strip().split(", "))
        m = re.match(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$", s)
        if m and int(m.group(1)) in jobs:
            jobs[int(m.group(1))]["finish"] = stamp
    for j in jobs.values():
        if j.get("finish") is not None:
            j["wall_s"] = j["finish"] - j["start"]
    return sorted(jobs.values(), key=lambda j: j["jobid"])


def time_v(text: str) -> dict:
    """The ``/usr/bin/time -v`` lines of a log that ends with them."""
    out = {}
    for key, name in [("Elapsed (wall clock) time", "elapsed"), ("Maximum resident set size",
                      "max_rss_kb"), ("User time", "user_s"), ("System time", "system_s"),
                      ("Percent of CPU", "percent_cpu"), ("Exit status", "exit_status")]:
        m = re.search(rf"^\s*{re.escape(key)}[^:]*: (.+)$", text, re.M)
        if m:
            out[name] = m.group(1).strip()
    return out


def collect(run_dir: Path, monitor_json: list[Path], log: Path, out: Path) -> dict:
    text = log.read_text()
    jobs = parse_log(text)
    mons = [json.loads(m.read_text()) for m in monitor_json]
    rss, cpu = {}, {}  # "features" / "quantize" / "transcribe-shard3" ... -> MB, CPU seconds
    for p in (p for mon in mons for p in mon["procs"]):
        kind = p["cmd"].split("whisper_ptq.cli", 1)[1].split()[0]
        shard = re.search(r"--shard (\d+)", p["cmd"])
        key = f"{kind}" + (f"-shard{shard.group(1)}" if shard else "")
        rss[key] = max(rss.get(key, 0), round(p["hwm_kb"] / 1024, 1))
        if p.get("cpu_s") is not None:
            cpu[key] = max(cpu.get(key, 0), p["cpu_s"])
    shards = []
    for t in sorted(run_dir.glob("results/*/*/*/*/shard-*.timing.json")):
        d = json.loads(t.read_text())
        keep = ["utterances", "audio_seconds", "compute_seconds", "encoder_seconds",
                "decoder_seconds", "longform_seconds", "generated_tokens", "rtf", "batches",
                "batch_size", "threads", "peak_rss_mb", "shard"]
        row = {k: d.get(k) for k in keep}
        row["file"] = str(t.relative_to(run_dir))
        i = d["shard"]["index"]
        job = next((j for j in jobs if j["rule"] == "transcribe"
                    and j.get("wildcards", {}).get("shard") == str(i)), {})
        row["job_wall_s"] = job.get("wall_s")
        row["monitor_peak_rss_mb"] = rss.get(f"transcribe-shard{i}")
        row["cpu_s"] = cpu.get(f"transcribe-shard{i}")
        shards.append(row)
    feats = sorted(run_dir.glob("data/features/*/*.safetensors"))
    manifests = sorted(run_dir.glob("data/features/*/*.manifest.jsonl"))
    features = {
        "cache_bytes": sum(f.stat().st_size for f in feats),
        "utterances": sum(len(m.read_text().splitlines()) for m in manifests),
        "job_wall_s": next((j.get("wall_s") for j in jobs if j["rule"] == "features"), None),
        "peak_rss_mb": rss.get("features"),
    }
    scores = [json.loads(s.read_text()) for s in sorted(run_dir.glob("results/*/*/*/*.score.json"))]
    score = [{**{k: s.get(k) for k in ("entry", "split", "wer", "audio_seconds",
                                       "compute_seconds", "rtf", "shards", "mixed_hardware")},
              "utterances": len(s.get("utterances") or [])} for s in scores]
    kinds: dict[str, int] = {}
    for j in jobs:
        kinds[j["rule"]] = kinds.get(j["rule"], 0) + 1
    starts = [j["start"] for j in jobs if j.get("start")]
    ends = [j["finish"] for j in jobs if j.get("finish")]
    result = {
        "run_dir": str(run_dir),
        "jobs": jobs,
        "job_kinds": kinds,
        "first_job_start": min(starts) if starts else None,
        "last_job_finish": max(ends) if ends else None,
        "jobs_wall_s": (max(ends) - min(starts)) if starts and ends else None,
        "time_v": time_v(text),
        "features": features,
        "shards": shards,
        "peak_rss_mb_by_process_kind": rss,
        "cpu_s_by_process_kind": cpu,
        "score": score,
        # [epoch seconds, 1-, 5-, 15-min load average] of every monitor, in time order
        "loadavg": sorted([round(mon["t0"] + x[0]), *map(float, x[1:])] for mon in mons
                          for x in mon["loadavg"]),
    }
    _write(out, result)
    return result


def table(r: dict) -> str:
    """The measured figures of a collected run as a markdown table."""
    out = ["| job | utterances | audio (s) | job wall (s) | timed compute (s) | CPU s | RTF timed"
           " / in CPU s | peak RSS (MB) |", "|---|---|---|---|---|---|---|---|"]
    f = r["features"]
    out.append(f"| features | {f['utterances']} | | {f['job_wall_s']:.0f} | | | | {f['peak_rss_mb']} |")
    q = next((j for j in r["jobs"] if j["rule"] == "quantize"), {})
    out.append(f"| quantize (fp32) | | | {q.get('wall_s', float('nan')):.0f} | | | | "
               f"{r['peak_rss_mb_by_process_kind'].get('quantize')} |")
    for s in sorted(r["shards"], key=lambda s: s["shard"]["index"]):
        cpu = s.get("cpu_s")
        cpu_rtf = "" if cpu is None else f"{s['rtf'] * cpu / s['job_wall_s']:.3f}"
        out.append(
            f"| transcribe shard {s['shard']['index']} [{s['shard']['start']}, {s['shard']['stop']}) "
            f"| {s['utterances']} | {s['audio_seconds']:.0f} | {s['job_wall_s'] or float('nan'):.0f} "
            f"| {s['compute_seconds']:.0f} | {'' if cpu is None else f'{cpu:.0f}'} | {s['rtf']:.3f} / "
            f"{cpu_rtf} | {s['peak_rss_mb']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("monitor")
    m.add_argument("run_dir", type=Path)
    m.add_argument("out", type=Path)
    c = sub.add_parser("collect")
    c.add_argument("run_dir", type=Path)
    c.add_argument("--monitor", type=Path, nargs="+", required=True)
    c.add_argument("--log", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "monitor":
        monitor(a.run_dir, a.out)
    else:
        r = collect(a.run_dir, a.monitor, a.log, a.out)
        print(json.dumps({k: r[k] for k in ("job_kinds", "jobs_wall_s", "time_v", "features",
                                            "score")}, indent=1))
        print(table(r))


if __name__ == "__main__":
    main()
