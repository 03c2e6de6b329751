"""``anomstream bench``: throughput of each stage on one clip, and the pipeline's ratios to them.

Measured in one run, on the same clip and batch size:
- decode-only: source -> prepared window batches, no model;
- model-only: the replica's scoring on batches already in memory (all cores to torch);
- naive loop: decode -> model -> zarr in one process;
- pipeline: the Ray pipeline with 1 and 2 replicas (actors started before the clock runs).
The clip is repeated as several streams so that each timing covers enough frames.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from pipeline.config import ScoreSection
from pipeline.naive import naive_score
from pipeline.orchestrator import ensure_ray, score_sources
from pipeline.sources import open_sources
from pipeline.windows import WindowBatch, window_batches
from workers.replica import ReplicaCore


def _decoded_batches(spec: str, core: ReplicaCore, batch_size: int) -> list[WindowBatch]:
    model = core.model
    source = open_sources(spec)[0]
    items = window_batches(source.frames(), source.stream_id, model.window_length, batch_size,
                           model.image_size, model.channels)
    return [b for b in items if isinstance(b, WindowBatch)]


def run_bench(spec: str, checkpoint: str, batch_size: int = 16, repeats: int = 4, out: str = "bench_out") -> dict[str, float]:
    cores = os.cpu_count() or 1
    out_dir = Path(out)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    core = ReplicaCore(checkpoint, threads=cores)
    results: dict[str, float] = {}

    started = time.perf_counter()
    batches = _decoded_batches(spec, core, batch_size)
    count = sum(b.size for b in batches)
    results["decode_fps"] = count / (time.perf_counter() - started)

    core.score(batches[-1])  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        for batch in batches:
            core.score(batch)
    results["model_fps"] = repeats * count / (time.perf_counter() - started)

    started = time.perf_counter()
    naive_frames = sum(naive_score(spec, checkpoint, out_dir / f"naive{i}.zarr", batch_size, cores) for i in range(repeats))
    results["naive_fps"] = naive_frames / (time.perf_counter() - started)
    del core
    torch.set_num_threads(1)  # the driver only waits from here on

    ensure_ray()
    for replicas in (1, 2):
        settings = ScoreSection(batch_size=batch_size, replicas=replicas)
        report = score_sources([spec] * repeats, checkpoint, out_dir / f"pipeline{replicas}.zarr", settings,
                               mode="overwrite", progress=False, max_active_streams=replicas + 1)
        results[f"pipeline{replicas}_fps"] = report.frames / report.seconds

    results["pipeline1_over_model"] = results["pipeline1_fps"] / results["model_fps"]
    results["pipeline1_over_naive"] = results["pipeline1_fps"] / results["naive_fps"]
    results["pipeline2_over_model"] = results["pipeline2_fps"] / results["model_fps"]
    results["naive_over_model"] = results["naive_fps"] / results["model_fps"]
    print(f"clip {spec}: {count} frames x {repeats}, batch {batch_size}, {cores} cores, torch {torch.__version__}")
    for key, value in results.items():
        print(f"{key:24s} {value:8.2f}")
    shutil.rmtree(out_dir, ignore_errors=True)
    return results
