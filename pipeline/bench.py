"""``anomstream bench``: throughput of each stage on one clip, and the pipeline's ratios to them.

Measured in one run, on the same clip and batch size:
- decode-only: source -> prepared window batches, no model;
- model-only: the replica's scoring on batches already in memory (all cores to torch);
- naive loop: decode -> model -> zarr in one process;
- pipeline: the Ray pipeline with 1 and 2 replicas (actors started before the clock runs), with
  the share of the run each replica spent inside its model (busy).
The clip is repeated as several streams so that each timing covers enough frames. The machine's
speed drifts by 10 % or more between seconds-long timings, so the measurements are taken in
``rounds`` interleaved rounds and each figure is the median over the rounds; ratios are taken
between medians.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from pipeline.config import ScoreSection
from pipeline.driver.ray_setup import ensure_ray
from pipeline.driver.run import score_sources
from pipeline.sources.resolve import open_sources
from pipeline.stream.naive import naive_score
from pipeline.stream.scorer import Scorer
from pipeline.stream.windows import WindowBatch, window_batches

STAGES = ("model_fps", "naive_fps", "pipeline1_fps", "pipeline2_fps")


def _decoded_batches(spec: str, core: Scorer, batch_size: int) -> list[WindowBatch]:
    model = core.model
    source = open_sources(spec)[0]
    items = window_batches(source.frames(), source.stream_id, model.window_length, batch_size,
                           model.image_size, model.channels)
    return [b for b in items if isinstance(b, WindowBatch)]


def _model_fps(core: Scorer, batches: list[WindowBatch], repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        for batch in batches:
            core.score(batch)
    return repeats * sum(b.size for b in batches) / (time.perf_counter() - started)


def run_bench(spec: str, checkpoint: str, batch_size: int = 16, repeats: int = 4, out: str = "bench_out",
              rounds: int = 3) -> dict[str, float]:
    cores = os.cpu_count() or 1
    out_dir = Path(out)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    core = Scorer(checkpoint, threads=cores)
    started = time.perf_counter()
    batches = _decoded_batches(spec, core, batch_size)
    count = sum(b.size for b in batches)
    results: dict[str, float] = {"decode_fps": count / (time.perf_counter() - started)}
    for batch in batches:  # warm-up: every batch shape once
        core.score(batch)

    samples: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "pipeline1_busy", "pipeline2_busy")}
    for round_number in range(rounds):
        torch.set_num_threads(cores)
        samples["model_fps"].append(_model_fps(core, batches, repeats))
        started = time.perf_counter()
        naive_frames = sum(naive_score(spec, checkpoint, out_dir / f"naive{i}.zarr", batch_size, cores) for i in range(repeats))
        samples["naive_fps"].append(naive_frames / (time.perf_counter() - started))
        torch.set_num_threads(1)  # the driver only waits from here on
        ensure_ray()
        for replicas in (1, 2):
            settings = ScoreSection(batch_size=batch_size, replicas=replicas)
            report = score_sources([spec] * repeats, checkpoint, out_dir / f"pipeline{replicas}.zarr", settings,
                                   mode="overwrite", progress=False, max_active_streams=replicas + 1)
            samples[f"pipeline{replicas}_fps"].append(report.frames / report.seconds)
            samples[f"pipeline{replicas}_busy"].append(statistics.mean(report.replica_busy))
        print(f"round {round_number + 1}/{rounds}: " + "  ".join(f"{k} {v[-1]:.2f}" for k, v in samples.items()), flush=True)

    results.update({key: statistics.median(values) for key, values in samples.items()})
    results["pipeline1_over_model"] = results["pipeline1_fps"] / results["model_fps"]
    results["pipeline1_over_naive"] = results["pipeline1_fps"] / results["naive_fps"]
    results["pipeline2_over_model"] = results["pipeline2_fps"] / results["model_fps"]
    results["naive_over_model"] = results["naive_fps"] / results["model_fps"]
    results["rounds"] = rounds
    print(f"clip {spec}: {count} frames x {repeats}, batch {batch_size}, {cores} cores, torch {torch.__version__}, "
          f"medians of {rounds} rounds")
    for key, value in results.items():
        print(f"{key:24s} {value:8.2f}")
    shutil.rmtree(out_dir, ignore_errors=True)
    return results
