"""Live latency benchmark (not a timed test): loopback MJPEG cameras at 10 and 25 fps, 1 and 2
streams, policies every and latest, each scored live for a fixed duration in one Ray session; or,
with ``--rtsp``, a real RTSP server (GStreamer's gst-rtsp-server, tests/rtsp_server.py: H.264, a live
test picture) with 1 and 4 cameras at 768x576@10 and 1920x1080@25, policy latest.

Prints per setup: latency p50 / p95 / p99 in ms and in frame intervals (capture -> row written,
the stores' ``latency_ms``; for RTSP capture is the camera's own clock through RTCP: glass to
store), the shares of captured frames scored and dropped, and frames captured per second against
the cameras' rate; for RTSP also the target (2 frame intervals + the model's time per window, from
the replicas' busy time) and the CPU's flags. Run it alone on the machine:

    python benchmarks/live_latency.py [--duration 20] [--video ../shared/data/vtest.avi] [--json out.json]
    python benchmarks/live_latency.py --rtsp [--duration 30] [--json out.json]
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

from anomstream.pipeline.assets import SHIPPED_CHECKPOINT
from anomstream.pipeline.config import ScoreSection
from anomstream.pipeline.driver.plan import RunPlan
from anomstream.pipeline.driver.ray_setup import ensure_ray
from anomstream.pipeline.driver.run import score_sources
from anomstream.pipeline.sources.camera import Reconnect
from anomstream.pipeline.sources.camera_server import spawn
from anomstream.pipeline.sources.resolve import SourceOptions
from anomstream.pipeline.store import FrameStatus, open_results
from anomstream.pipeline.stream.live import LiveOptions

SETUPS = [(fps, streams, policy) for fps in (10, 25) for streams in (1, 2) for policy in ("every", "latest")]
RTSP_SETUPS = [("768x576", 10, 1), ("768x576", 10, 4), ("1920x1080", 25, 1), ("1920x1080", 25, 4)]


def cpu_flags() -> str:
    """The CPU's model and the matrix flags that change speed figures (compare only within a run)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = [flag for flag in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if flag in flags]
    return f"{model}; {' '.join(wanted) or 'no avx512/amx'}"


def run_rtsp_setup(size: str, fps: int, cameras: int, duration: float, folder: Path) -> dict:
    """One RTSP server with ``cameras`` paths, scored live (policy latest) for ``duration`` s."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.servers import RtspCamera

    server = RtspCamera("--size", size, "--fps", str(fps), paths=tuple(f"cam{i}" for i in range(cameras)))
    out = folder / f"rtsp_{size}_{fps}_{cameras}.zarr"
    try:
        report = score_sources(RunPlan(specs=[server.url(f"cam{i}") for i in range(cameras)],
                                       checkpoint=str(SHIPPED_CHECKPOINT), out=out, settings=ScoreSection(), progress=False,
                                       source_options=SourceOptions(reconnect=Reconnect(stall_timeout_s=10)),
                                       live=LiveOptions(policy="latest"), duration_s=duration))
    finally:
        server.stop()
    root = open_results(out)
    groups = [root[key] for key in sorted(root.group_keys())]
    latency = [group.attrs["latency_ms"] or {"p50": np.nan, "p95": np.nan, "p99": np.nan} for group in groups]
    status = [group["status"][:] for group in groups]
    scored = sum(int((s == FrameStatus.SCORED).sum()) for s in status)
    captured = sum(len(s) for s in status)
    model_ms = float(np.mean(report.replica_busy)) * report.seconds * len(report.replica_busy) / max(scored, 1) * 1000
    interval_ms = 1000.0 / fps
    return {"size": size, "fps": fps, "cameras": cameras, "policy": "latest",
            "p50_ms": max(r["p50"] for r in latency), "p95_ms": max(r["p95"] for r in latency),
            "p99_ms": max(r["p99"] for r in latency), "interval_ms": interval_ms, "model_ms": model_ms,
            "target_ms": 2 * interval_ms + model_ms, "scored_share": scored / max(captured, 1),
            "captured_fps": float(np.mean([len(s) / max(float(g["timestamp"][-1] - g["timestamp"][0]), 1e-9)
                                           for s, g in zip(status, groups) if len(s) > 1] or [0.0])),
            "clock": sorted({(g.attrs.get("camera") or {}).get("info", {}).get("clock", "?") for g in groups}),
            "errors": report.errors}


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
    parser.add_argument("--rtsp", action="store_true", help="cameras from a real RTSP server (tests/rtsp_server.py)")
    args = parser.parse_args()
    ensure_ray()
    folder = Path(tempfile.mkdtemp(prefix="live_bench_"))
    results = []
    try:
        if args.rtsp:
            print(f"cpu: {cpu_flags()}", flush=True)
        for size, fps, cameras in RTSP_SETUPS if args.rtsp else []:
            started = time.monotonic()
            result = run_rtsp_setup(size, fps, cameras, args.duration, folder)
            results.append(result)
            print(f"{size:>9}@{fps} x{cameras}  glass->store ms p50 {result['p50_ms']:5.0f} p95 {result['p95_ms']:5.0f} "
                  f"p99 {result['p99_ms']:5.0f}  target {result['target_ms']:4.0f} (2 x {result['interval_ms']:.0f} + model "
                  f"{result['model_ms']:.0f})  p95/target {result['p95_ms'] / result['target_ms']:.2f}  scored "
                  f"{result['scored_share']:.0%}  captured {result['captured_fps']:.1f} fps  clock {result['clock']}"
                  f"  [{time.monotonic() - started:.0f} s]", flush=True)
        for fps, streams, policy in [] if args.rtsp else SETUPS:
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
