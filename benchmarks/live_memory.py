"""Memory of a long live run (issue 32): one RTSP camera (tests/rtsp_server.py, 768x576 at 10 fps)
scored by ``anomstream live`` for ``--minutes``, the resident memory (RSS, from /proc) of every
process of the run sampled every ``--every`` seconds: the driver, Ray's GCS and raylet, each actor
(decoder, replicas, writer), grouped by role. Prints per role the RSS after the first sample past
``--settle`` minutes, at the end, and the growth per minute after settling (a least-squares slope),
and writes every sample to ``--json``. Not a timed test; run it alone on the machine:

    python benchmarks/live_memory.py --minutes 30 --json benchmarks/results/live_memory_30min.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            tree[int(fields[1])].append(int(entry.name))
    return tree


def _role(pid: int) -> str:
    """What a process of the run is, by its command line (Ray sets actors' titles to ray::Class)."""
    try:
        command = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")).strip()
    except OSError:
        return "gone"
    for marker, role in (("ray::ReplicaActor", "replica"), ("ray::DecodeActor", "decoder"),
                         ("ray::WriterActor", "writer"), ("gcs_server", "ray gcs"), ("raylet", "ray raylet"),
                         ("dashboard", "ray dashboard"), ("log_monitor", "ray log monitor"), ("ray::IDLE", "ray idle worker"),
                         ("default_worker", "ray worker"), ("pipeline.cli", "driver")):
        if marker in command:
            return role
    return command.split(" ", 1)[0].rsplit("/", 1)[-1] or "?"


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sample(root: int) -> dict[str, float]:
    """RSS (MiB) per role over ``root`` and its descendants."""
    tree, todo, seen = _children(), [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(tree.get(pid, []))
    totals: dict[str, float] = defaultdict(float)
    for pid in seen:
        rss = _rss_mib(pid)
        if rss is not None:
            totals[_role(pid)] += rss
    return dict(totals)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples (default 30)")
    parser.add_argument("--settle", type=float, default=3.0, help="minutes before growth is measured (default 3)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from tests.servers import RtspCamera

    camera = RtspCamera("--size", "768x576", "--fps", "10")
    folder = Path(tempfile.mkdtemp(prefix="live_memory_"))
    command = [sys.executable, "-m", "anomstream.pipeline.cli", "live", camera.url(), "--out", str(folder / "m.zarr"),
               "--duration", str(args.minutes * 60), "--quiet"]
    run = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    samples = []
    started = time.monotonic()
    try:
        while run.poll() is None:
            time.sleep(args.every)
            samples.append({"minute": (time.monotonic() - started) / 60, "rss_mib": sample(run.pid)})
            print(f"{samples[-1]['minute']:5.1f} min  " + "  ".join(f"{role} {mib:.0f}" for role, mib in
                                                                 sorted(samples[-1]["rss_mib"].items())), flush=True)
    finally:
        run.wait()
        camera.stop()
    settled = [s for s in samples if s["minute"] >= args.settle and s["rss_mib"]]
    print(f"exit status {run.returncode}; RSS MiB after {args.settle:g} min -> end, growth MiB/min after settling:")
    for role in sorted({role for s in settled for role in s["rss_mib"]}):
        points = [(s["minute"], s["rss_mib"][role]) for s in settled if role in s["rss_mib"]]
        if len(points) < 3:
            continue
        minutes, mib = np.array(points).T
        slope = float(np.polyfit(minutes, mib, 1)[0])
        print(f"  {role:16s} {mib[0]:7.0f} -> {mib[-1]:7.0f}   {slope:+.2f} MiB/min")
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "exit_status": run.returncode,
                                         "samples": samples}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
