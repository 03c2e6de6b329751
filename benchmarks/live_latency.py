"""Live latency benchmark (not a timed test): loopback MJPEG cameras at 10 and 25 fps, 1 and 2
streams, policies every and latest, each scored live for a fixed duration in one Ray session.

Prints per setup: latency p50 / p95 / p99 in ms and in frame intervals (capture -> row written,
the stores' ``latency_ms``), the shares of captured frames scored and dropped, and frames captured
per second against the cameras' rate. Run it alone on the machine:

    python benchmarks/live_latency.py [--duration 20] [--video ../shared/data/vtest.avi] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.assets import SHIPPED_CHECKPOINT
from pipeline.config import ScoreSection
from pipeline.driver.plan import RunPlan
from pipeline.driver.ray_setup import ensure_ray
from pipeline.driver.run import score_sources
from pipeline.sources.camera import Reconnect
from pipeline.sources.camera_server import spawn
from pipeline.sources.resolve import SourceOptions
from pipeline.store import FrameStatus, open_results
from pipeline.stream.live import LiveOptions

SETUPS = [(fps, streams, policy) for fps in (10, 25) for streams in (1, 2) for policy in ("every", "latest")]


def run_setup(video: Path, fps: float, streams: int, policy: str, duration: float, folder: Path) -> dict:
    cameras = [spawn(video, fps) for _ in range(streams)]
    out = folder / f"live_{fps}_{streams}_{policy}.zarr"
    try:
        report = score_sources(RunPlan(specs=[url for _, url in cameras], checkpoint=str(SHIPPED_CHECKPOINT), out=out,
                                       settings=ScoreSection(), progress=False,
                                       source_options=SourceOptions(reconnect=Reconnect(stall_timeout_s=5)),
                                       live=LiveOptions(policy=policy), duration_s=duration))
    finally:
        for process, _ in cameras:
            process.kill()
            process.wait()
    root = open_results(out)
    rows = []
    for key in sorted(root.group_keys()):
        group = root[key]
        status = group["status"][:]
        latency = group.attrs["latency_ms"] or {"p50": np.nan, "p95": np.nan, "p99": np.nan}
        rows.append({"captured": len(status), "scored": int((status == FrameStatus.SCORED).sum()),
                     "dropped": int((status == FrameStatus.DROPPED_BEHIND).sum()), **latency,
                     "seconds": float(group["timestamp"][-1] - group["timestamp"][0]) if len(status) > 1 else 0.0})
    interval_ms = 1000.0 / fps
    captured = sum(r["captured"] for r in rows)
    result = {
        "fps": fps, "streams": streams, "policy": policy,
        "p50_ms": max(r["p50"] for r in rows), "p95_ms": max(r["p95"] for r in rows), "p99_ms": max(r["p99"] for r in rows),
        "scored_share": sum(r["scored"] for r in rows) / max(captured, 1),
        "dropped_share": sum(r["dropped"] for r in rows) / max(captured, 1),
        "captured_fps": sum(r["captured"] / max(r["seconds"], 1e-9) for r in rows) / len(rows),
        "errors": report.errors,
    }
    for key in ("p50", "p95", "p99"):
        result[f"{key}_intervals"] = result[f"{key}_ms"] / interval_ms
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default="../shared/data/vtest.avi", type=Path)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each setup is scored (default 20)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ensure_ray()
    folder = Path(tempfile.mkdtemp(prefix="live_bench_"))
    results = []
    try:
        for fps, streams, policy in SETUPS:
            started = time.monotonic()
            result = run_setup(args.video, fps, streams, policy, args.duration, folder)
            results.append(result)
            print(f"{fps:>3} fps x{streams} {policy:6s}  latency ms p50 {result['p50_ms']:6.0f} p95 {result['p95_ms']:6.0f} "
                  f"p99 {result['p99_ms']:6.0f}  (intervals {result['p50_intervals']:.1f} / {result['p95_intervals']:.1f} / "
                  f"{result['p99_intervals']:.1f})  scored {result['scored_share']:.0%} dropped {result['dropped_share']:.0%}"
                  f"  captured {result['captured_fps']:.1f} fps  [{time.monotonic() - started:.0f} s]", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
