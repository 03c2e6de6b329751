"""Bytes a live store takes per hour per stream, maps apart from the rest, for map retention
choices (``--keep-maps``): a loopback camera scored live for a while, bytes on disk scaled to an hour.

    python benchmarks/live_store_bytes.py [--duration 60] [--fps 10] [--keep 1 10 0]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from anomstream.pipeline.assets import SHIPPED_CHECKPOINT
from anomstream.pipeline.config import ScoreSection
from anomstream.pipeline.driver.plan import RunPlan
from anomstream.pipeline.driver.ray_setup import ensure_ray
from anomstream.pipeline.driver.run import score_sources
from anomstream.pipeline.sources.camera_server import spawn
from anomstream.pipeline.store import open_results
from anomstream.pipeline.stream.live import LiveOptions


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default="../shared/data/vtest.avi", type=Path)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--keep", type=int, nargs="+", default=[1, 10, 0], help="--keep-maps values to measure")
    args = parser.parse_args()
    ensure_ray()
    folder = Path(tempfile.mkdtemp(prefix="live_bytes_"))
    camera, url = spawn(args.video, args.fps)
    try:
        for keep in args.keep:
            out = folder / f"keep{keep}.zarr"
            score_sources(RunPlan(specs=[url], checkpoint=str(SHIPPED_CHECKPOINT), out=out, settings=ScoreSection(),
                                  progress=False, live=LiveOptions(policy="every", maps_every=keep),
                                  duration_s=args.duration))
            root = open_results(out)
            (key,) = root.group_keys()
            group = out / key
            rows = root[key].attrs["written"]
            span = float(root[key]["timestamp"][-1] - root[key]["timestamp"][0])
            per_hour = 3600.0 / span
            maps, total = _bytes(group / "map"), _bytes(group)
            print(f"keep-maps {keep:>2}: {rows} frames in {span:.0f} s  maps {maps * per_hour / 2**20:8.1f} MiB/h  "
                  f"the rest {(total - maps) * per_hour / 2**20:6.2f} MiB/h  total {total * per_hour / 2**20:8.1f} MiB/h "
                  f"({total / rows:.0f} bytes/frame)", flush=True)
    finally:
        camera.kill()
        camera.wait()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
