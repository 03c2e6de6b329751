"""Scoring run on Ray: decode actors -> model replicas -> one writer, with bounded in-flight work.

The driver only moves object references: window batches go from a decode actor straight to a
replica, and results from a replica straight to the writer. Results are written in frame order
per stream whichever replica finished first.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

import pipeline
from models.registry import build_model
from pipeline.checkpoint import checkpoint_params, file_sha256, read_checkpoint
from pipeline.config import ScoreSection
from pipeline.errors import AnomstreamError
from pipeline.sources import Source, open_sources
from pipeline.store import result_arrays
from workers.decoder import DecodeActor
from workers.replica import ReplicaActor
from workers.writer import WriterActor

SMALL_CPU = 0.05  # decode and writer actors mostly wait; reserving whole CPUs would starve replicas


def ensure_ray(address: str | None = None) -> None:
    """Join ``address`` or start a quiet local Ray instance (once per process)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except ConnectionError as error:
        raise AnomstreamError(f"{address}: cannot join Ray cluster ({error})") from None


@dataclass
class StreamReport:
    source: str
    frames: int = 0
    error: str | None = None
    skipped: bool = False


@dataclass
class RunReport:
    store: Path
    streams: dict[str, StreamReport] = field(default_factory=dict)
    seconds: float = 0.0  # from the replicas being ready to the last frame written
    replicas: int = 0
    device: str = "cpu"

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.streams.values())

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.streams.values() if s.error]


def _replica_options(settings: ScoreSection) -> tuple[dict[str, Any], int | None]:
    resources = ray.cluster_resources()
    if resources.get("GPU", 0) >= settings.gpu_fraction:
        return {"num_gpus": settings.gpu_fraction, "num_cpus": SMALL_CPU}, settings.replica_threads
    cpus = resources.get("CPU", 1.0)
    share = max(SMALL_CPU, (cpus - 4 * SMALL_CPU) / settings.replicas)
    threads = settings.replica_threads or max(1, int(cpus // settings.replicas))
    return {"num_cpus": min(settings.replica_cpus, share)}, threads


def _unique_ids(sources: list[Source]) -> None:
    seen: dict[str, int] = {}
    for source in sources:
        if source.stream_id in seen:
            seen[source.stream_id] += 1
            source.stream_id = f"{source.stream_id}_{seen[source.stream_id]}"
        else:
            seen[source.stream_id] = 0


class _Stream:
    def __init__(self, source: Source, actor: Any, first_sequence: int) -> None:
        self.source = source
        self.actor = actor
        self.decode_pending = False
        self.ended: dict | None = None
        self.results: dict[int, tuple[int, Any]] = {}  # sequence -> (start, result ref)
        self.next_sequence = first_sequence  # batches before it are in the store already (resume)
        self.in_flight = 0


def score_sources(specs: list[str], checkpoint: str, out: str | Path, settings: ScoreSection,
                  mode: str = "create", address: str | None = None, progress: bool = True,
                  max_frames: int | None = None, max_active_streams: int | None = None,
                  expected_model: str | None = None) -> RunReport:
    """Score every stream of ``specs`` into the zarr store ``out``; returns what was written."""
    sources = [source for spec in specs for source in open_sources(spec, max_frames)]
    _unique_ids(sources)
    payload = read_checkpoint(checkpoint, expected_model)
    model = build_model(payload["model"], checkpoint_params(payload, checkpoint))
    map_shape = (model.image_size, model.image_size)
    arrays = result_arrays(map_shape, list(model.term_weights))
    run_attrs = {
        "model": model.name, "checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint),
        "config": {"model": payload["params"], "score": settings.model_dump()},
        "term_weights": model.term_weights, "window_length": model.window_length,
        "anomstream_version": pipeline.__version__,
    }
    ensure_ray(address)
    writer = WriterActor.options(num_cpus=SMALL_CPU).remote()
    ray.get(writer.open.remote(str(out), run_attrs, mode))
    options, threads = _replica_options(settings)
    replicas = [ReplicaActor.options(**options).remote(str(checkpoint), threads) for _ in range(settings.replicas)]
    devices = ray.get([replica.device.remote() for replica in replicas])
    report = RunReport(Path(out), replicas=len(replicas), device=devices[0])
    started = time.time()  # actors are up: from here the clock measures throughput
    capacity = settings.replicas * settings.in_flight_per_replica
    active_limit = max_active_streams or max(2, settings.replicas + 1)
    waiting = deque(sources)
    active: dict[str, _Stream] = {}
    ready: deque[tuple[str, dict, Any]] = deque()  # decoded batches waiting for a replica
    decode_refs: dict[Any, tuple[str, Any]] = {}
    score_refs: dict[Any, tuple[str, dict, int]] = {}
    replica_load = [0] * len(replicas)
    write_refs: deque = deque()
    total = sum(s.frame_count or 0 for s in sources) if all(s.frame_count for s in sources) else None
    bar = tqdm(total=total, desc="scoring", unit="frame", disable=not progress)

    def start_streams() -> None:
        while waiting and len(active) < active_limit:
            source = waiting.popleft()
            report.streams[source.stream_id] = stream_report = StreamReport(source.describe())
            if ray.get(writer.is_complete.remote(source.stream_id)):
                stream_report.skipped = True
                bar.update(source.frame_count or 0)
                continue
            done = ray.get(writer.written.remote(source.stream_id))
            ray.get(writer.open_stream.remote(source.stream_id, arrays, settings.batch_size, source.frame_count,
                                              {"source": source.describe(), "fps": source.fps}))
            bar.update(done)
            stream_report.frames = done
            actor = DecodeActor.options(num_cpus=SMALL_CPU).remote(
                source, model.window_length, settings.batch_size, model.image_size, model.channels, done)
            active[source.stream_id] = _Stream(source, actor, first_sequence=done // settings.batch_size)

    def request_decodes() -> None:
        for stream_id, stream in active.items():
            if stream.ended is None and not stream.decode_pending and len(ready) < capacity:
                header_ref, batch_ref = stream.actor.next_batch.remote()
                decode_refs[header_ref] = (stream_id, batch_ref)
                stream.decode_pending = True

    def dispatch() -> None:
        while ready and sum(replica_load) < capacity:
            stream_id, header, batch_ref = ready.popleft()
            target = min(range(len(replicas)), key=replica_load.__getitem__)
            replica_load[target] += 1
            active[stream_id].in_flight += 1
            score_refs[replicas[target].score.remote(batch_ref)] = (stream_id, header, target)

    def flush_writes(stream_id: str) -> None:
        stream = active[stream_id]
        while stream.next_sequence in stream.results:
            start, result_ref = stream.results.pop(stream.next_sequence)
            write_refs.append(writer.write.remote(stream_id, start, result_ref))
            stream.next_sequence += 1
        while len(write_refs) > 2 * capacity:
            _collect_write(write_refs.popleft())
        if stream.ended is not None and stream.in_flight == 0 and not stream.results:
            while write_refs:
                _collect_write(write_refs.popleft())
            ray.get(writer.close_stream.remote(stream_id, stream.ended["error"]))
            report.streams[stream_id].error = stream.ended["error"]
            ray.kill(stream.actor)
            del active[stream_id]

    def _collect_write(ref: Any) -> None:
        ray.get(ref)

    try:
        start_streams()
        while active or waiting:
            request_decodes()
            dispatch()
            pending = list(decode_refs) + list(score_refs)
            if not pending:
                state = (tuple(active), len(waiting))
                for stream_id in list(active):
                    flush_writes(stream_id)
                start_streams()
                if (tuple(active), len(waiting)) == state:
                    raise RuntimeError(f"scoring stalled: streams {sorted(active)} wait on nothing")
                continue
            done, _ = ray.wait(pending, num_returns=1)
            ref = done[0]
            if ref in decode_refs:
                stream_id, batch_ref = decode_refs.pop(ref)
                stream = active[stream_id]
                stream.decode_pending = False
                header = ray.get(ref)
                if header["end"]:
                    stream.ended = header
                    flush_writes(stream_id)
                else:
                    ready.append((stream_id, header, batch_ref))
            else:
                stream_id, header, target = score_refs.pop(ref)
                replica_load[target] -= 1
                stream = active[stream_id]
                stream.in_flight -= 1
                stream.results[header["sequence"]] = (header["start"], ref)
                report.streams[stream_id].frames += header["size"]
                bar.update(header["size"])
                flush_writes(stream_id)
            start_streams()
    finally:
        bar.close()
        for stream_id, stream in list(active.items()):  # interrupted: keep what is written
            while write_refs:
                _collect_write(write_refs.popleft())
            ray.get(writer.close_stream.remote(stream_id, "interrupted"))
            ray.kill(stream.actor)
        for actor in (*replicas, writer):
            ray.kill(actor)
    report.seconds = time.time() - started
    return report

