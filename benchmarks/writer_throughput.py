"""Writer throughput (issue 19's scale model): frames/s one writer stores, and K writers through Ray.

    python benchmarks/writer_throughput.py [--streams 8] [--frames 720] [--writers 1,2]

(a) ``store``: :class:`pipeline.store.ResultStore` written in one process, batches of 16 rows
    (float16 128x128 maps with the noise of a real map, scalars, two terms), every stream opened,
    written and closed: what one writer's zarr work costs per frame.
(b) ``ray_K``: the same rows sent as object references to K ``WriterActor`` processes (streams
    split between them, each stream's batches in order, at most 4 calls in flight per writer), no
    calibration and no events: what the pipeline's writers can take. On a machine with fewer free
    cores than K writers the figure cannot scale.
Prints ``name value`` lines; record them with the date in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 16
MAP = (128, 128)
TERMS = ["gradient_excess", "deformation"]


def _rows(start: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    smooth = np.linspace(0, 1, MAP[0] * MAP[1], dtype=np.float32).reshape(MAP)
    return {"score": rng.random(BATCH, dtype=np.float32), "score_raw": rng.random(BATCH, dtype=np.float32),
            "map": (smooth + 0.05 * rng.random((BATCH, *MAP), dtype=np.float32)).astype(np.float16),
            "frame_index": np.arange(start, start + BATCH), "timestamp": np.arange(start, start + BATCH) / 25.0,
            "valid": np.ones(BATCH, bool), "status": np.zeros(BATCH, np.uint8),
            **{f"term_{name}": rng.random(BATCH, dtype=np.float32) for name in TERMS}}


def store_fps(folder: Path, streams: int, frames: int) -> float:
    from anomstream.pipeline.store import ResultStore, result_arrays

    rng = np.random.default_rng(0)
    batches = [_rows(start, rng) for start in range(0, frames, BATCH)]
    arrays = result_arrays(MAP, TERMS)
    started = time.perf_counter()
    store = ResultStore(folder / "store.zarr", {"model": "dmad"}, "overwrite")
    for stream in range(streams):
        store.open_stream(f"s{stream}", arrays, BATCH, frames, {"source": f"s{stream}"})
        for number, rows in enumerate(batches):
            store.write(f"s{stream}", number * BATCH, rows)
        store.close_stream(f"s{stream}")
    return streams * frames / (time.perf_counter() - started)


def ray_fps(folder: Path, streams: int, frames: int, writers: int) -> float:
    import ray

    from anomstream.pipeline.driver.ray_setup import ensure_ray
    from anomstream.pipeline.store import result_arrays
    from anomstream.workers.writer import WriterActor, WriterConfig

    ensure_ray()
    rng = np.random.default_rng(0)
    refs = [ray.put(_rows(start, rng)) for start in range(0, frames, BATCH)]
    arrays = result_arrays(MAP, TERMS)
    out = str(folder / f"ray{writers}.zarr")
    actors = [WriterActor.options(num_cpus=0).remote() for _ in range(writers)]
    ray.get(actors[0].open.remote(WriterConfig(out, {"model": "dmad"}, "overwrite")))
    ray.get([actor.open.remote(WriterConfig(out, {"model": "dmad"}, "resume", deliver=False)) for actor in actors[1:]])
    started = time.perf_counter()
    owner = {f"s{stream}": actors[stream % writers] for stream in range(streams)}
    ray.get([owner[s].open_stream.remote(s, arrays, BATCH, frames, {"source": s}) for s in owner])
    in_flight: list = []
    for number, ref in enumerate(refs):
        for stream_id, actor in owner.items():
            in_flight.append(actor.write.remote(stream_id, number * BATCH, ref))
        while len(in_flight) > 4 * writers:
            ray.get(in_flight.pop(0))
    ray.get(in_flight)
    ray.get([actor.close_stream.remote(s) for s, actor in owner.items()])
    fps = streams * frames / (time.perf_counter() - started)
    for actor in actors:
        ray.kill(actor)
    return fps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--frames", type=int, default=720, help="per stream, a multiple of 16")
    parser.add_argument("--writers", default="1,2", help="writer counts measured through Ray")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="writer_bench_"))
    try:
        print(f"store_fps {store_fps(folder, args.streams, args.frames):.0f}", flush=True)
        for count in (int(part) for part in args.writers.split(",")):
            print(f"ray_{count}_fps {ray_fps(folder, args.streams, args.frames, count):.0f}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
