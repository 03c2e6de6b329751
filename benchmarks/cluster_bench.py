"""Distributed batch scoring, side by side in one run (issue 19): the same job, the Ped2 test set
(12 clips) and the Avenue test videos in ../shared/data, scored by

  local      our pipeline on a local Ray (``anomstream score --manifest``)
  cluster    our pipeline on a 2-node loopback cluster (``--address``)
  kill       the same on the cluster, one ReplicaActor process SIGKILLed at 30 % of the clean job's time
  ray_data   Ray Data on a local Ray: one row per video -> ``flat_map`` into windows -> ``map_batches``
             with an actor pool of the same model (what a Ray Data user would write)

Each job is a fresh process (its own Ray start), timed from its start to its end (wall seconds,
Ray start and model loading included), then the frames scored per second and the ratios to
``local``. Our pipeline also writes every frame's score and map to a zarr store; the Ray Data job
only brings the scores and maps back to its driver (no store): the comparison favours Ray Data.

    pip install -e ".[bench]"   # Ray Data needs pyarrow
    python benchmarks/cluster_bench.py [--data ../shared/data] [--replicas 2] [--out DIR]

Prints ``name value`` lines; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from anomstream.pipeline.assets import SHIPPED_CHECKPOINT  # noqa: E402
from anomstream.pipeline.driver.local_cluster import start_local_cluster, worker_pids  # noqa: E402
from anomstream.pipeline.store import FrameStatus, open_results  # noqa: E402


def job_specs(data: Path) -> list[str]:
    ped2 = sorted(p for p in (data / "ped2" / "testing" / "frames").iterdir() if p.is_dir())
    avenue = sorted((data / "avenue" / "testing_videos").glob("*.avi"))
    return [str(p) for p in ped2 + avenue]


def run_ours(manifest: Path, out: Path, replicas: int, address: str | None = None, kill_after_s: float | None = None,
             cluster=None) -> dict:
    command = [sys.executable, "-m", "anomstream.pipeline.cli", "score", "--manifest", str(manifest), "--out", str(out),
               "--replicas", str(replicas), "--quiet", *(["--address", address] if address else [])]
    started = time.perf_counter()
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after_s is not None:
        time.sleep(kill_after_s)
        pids = worker_pids(cluster, "ray::ReplicaActor")
        os.kill(pids[0], signal.SIGKILL)
    stdout, stderr = run.communicate()
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {stderr[-2000:]}")
    root = open_results(out)
    scored = sum(int((root[s]["status"][:] == FrameStatus.SCORED).sum()) for s in root.group_keys())
    frames = sum(int(root[s].attrs["written"]) for s in root.group_keys())
    report = next((line for line in stdout.splitlines() if line.startswith("store:")), "")  # Ray prints lines of its own
    return {"seconds": seconds, "frames": frames, "scored": scored, "report": report,
            "faults": root.attrs.get("faults", {}).get("counts", {})}


def run_ray_data(specs: list[str], replicas: int, batch_size: int) -> dict:
    """Ray Data, in this process (called in a fresh subprocess by main)."""
    import ray
    import torch

    from anomstream.pipeline.checkpoint import read_checkpoint_and_hash
    from anomstream.pipeline.sources.resolve import open_sources
    from anomstream.pipeline.stream.scorer import Scorer
    from anomstream.pipeline.stream.windows import WindowBatch, window_batches

    started = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    payload, _ = read_checkpoint_and_hash(SHIPPED_CHECKPOINT)
    window, size, channels = 5, payload["params"]["image_size"], payload["params"]["channels"]

    def windows_of(row: dict) -> list[dict]:
        rows = []
        for source in open_sources(row["spec"]):
            for batch in window_batches(source.frames(), source.stream_id, window, batch_size, size, channels):
                if isinstance(batch, WindowBatch) and batch.valid.any():
                    for frame, clip in zip(batch.frame_index[batch.valid], batch.windows(), strict=True):
                        rows.append({"stream": row["spec"], "frame": int(frame), "window": clip})
        return rows

    class ScoreWindows:
        def __init__(self) -> None:
            self.scorer = Scorer(str(SHIPPED_CHECKPOINT), threads=max(1, os.cpu_count() // replicas))

        def __call__(self, batch: dict) -> dict:
            with torch.inference_mode():
                output = self.scorer.model.score(torch.from_numpy(batch["window"]))
            return {"stream": batch["stream"], "frame": batch["frame"], "score": output.score.numpy(),
                    "map": output.anomaly_map.numpy().astype(np.float16)}

    # the same resources as our pipeline's: decoding mostly waits (a sliver of a CPU), replicas share the rest
    cpus = ray.cluster_resources()["CPU"]
    dataset = ray.data.from_items([{"spec": spec} for spec in specs]).flat_map(windows_of, num_cpus=0.05)
    scored = dataset.map_batches(ScoreWindows, batch_size=batch_size, concurrency=replicas,
                                 num_cpus=(cpus - 0.2) / replicas, batch_format="numpy")
    keys, scores = [], []
    for batch in scored.iter_batches(batch_size=256, batch_format="numpy"):
        keys += list(zip(batch["stream"], batch["frame"], strict=True))
        scores.append(batch["score"])
    seconds = time.perf_counter() - started
    ray.shutdown()
    return {"seconds": seconds, "scored": len(keys), "unique": len(set(keys)),
            "finite": bool(np.isfinite(np.concatenate(scores)).all())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, help="keep the stores here (default: a temporary folder)")
    parser.add_argument("--ray-data-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    specs = job_specs(args.data)
    if args.ray_data_worker:
        print(json.dumps(run_ray_data(specs, args.replicas, args.batch_size)))
        return
    folder = args.out or Path(tempfile.mkdtemp(prefix="cluster_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "job.txt"
    manifest.write_text("\n".join(specs) + "\n")
    results = {"local": run_ours(manifest, folder / "local.zarr", args.replicas)}
    cluster = start_local_cluster(nodes=2, cpus_per_node=os.cpu_count() / 2)
    try:
        results["cluster"] = run_ours(manifest, folder / "cluster.zarr", args.replicas, cluster.address)
        results["kill"] = run_ours(manifest, folder / "kill.zarr", args.replicas, cluster.address,
                                   kill_after_s=0.3 * results["cluster"]["seconds"], cluster=cluster)
    finally:
        cluster.shutdown()
    worker = subprocess.run([sys.executable, __file__, "--ray-data-worker", "--data", str(args.data), "--replicas",
                             str(args.replicas), "--batch-size", str(args.batch_size)],
                            cwd=REPO, capture_output=True, text=True)
    if worker.returncode != 0:
        raise SystemExit(f"Ray Data job failed: {worker.stderr[-2000:]}")
    results["ray_data"] = json.loads(worker.stdout.strip().splitlines()[-1])

    print(f"job_videos {len(specs)}")
    print(f"job_frames {results['local']['frames']}")
    print(f"job_scored_frames {results['local']['scored']}")
    for name, result in results.items():
        print(f"{name}_seconds {result['seconds']:.1f}")
        print(f"{name}_scored_fps {result['scored'] / result['seconds']:.2f}")
    for name in ("cluster", "kill", "ray_data"):
        print(f"{name}_vs_local {results['local']['seconds'] / results[name]['seconds']:.3f}")
    print(f"kill_cost_seconds {results['kill']['seconds'] - results['cluster']['seconds']:.1f}")
    print(f"kill_faults {json.dumps(results['kill']['faults'])}")
    print(f"ray_data_rows_unique {results['ray_data']['unique']} of {results['ray_data']['scored']}")
    for name in ("local", "cluster", "kill"):
        print(f"{name}_report {results[name]['report']}")


if __name__ == "__main__":
    main()
