"""Scoring run on Ray: decode actors -> model replicas -> one writer, with bounded in-flight work.

The driver only moves object references: window batches go from a decode actor straight to a
replica, and results from a replica straight to the writer. Results are written in frame order
per stream whichever replica finished first.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

import pipeline
from models.registry import build_model
from pipeline.checkpoint import checkpoint_params, file_sha256, read_checkpoint
from pipeline.config import ScoreSection
from pipeline.driver.ray_setup import ensure_ray
from pipeline.driver.report import RunReport, StreamReport
from pipeline.sources.base import Source
from pipeline.sources.resolve import SourceOptions, resolve_inputs
from pipeline.store import result_arrays, stream_key
from pipeline.stream.windows import BatchHeader, EndOfStream
from workers.decoder import DecodeActor
from workers.replica import ReplicaActor
from workers.writer import WriterActor

SMALL_CPU = 0.05  # decode and writer actors mostly wait; reserving whole CPUs would starve replicas


def _replica_options(settings: ScoreSection, helper_cpus: float) -> tuple[dict[str, Any], int | None]:
    """Ray options and torch threads of a replica: a GPU fraction when the cluster has GPUs, else an
    equal share of the CPUs left by the decoders and the writer (so that nothing pends)."""
    resources = ray.cluster_resources()
    if resources.get("GPU", 0) >= settings.gpu_fraction:
        return {"num_gpus": settings.gpu_fraction, "num_cpus": SMALL_CPU}, settings.replica_threads
    cpus = resources.get("CPU", 1.0)
    share = max(SMALL_CPU, (cpus - helper_cpus) / settings.replicas)
    threads = settings.replica_threads or max(1, int(cpus // settings.replicas))
    return {"num_cpus": min(settings.replica_cpus, share)}, threads


def _unique_ids(sources: list[Source]) -> None:
    """Stream ids the store can hold (:func:`pipeline.store.stream_key`), made unique in input order."""
    seen: dict[str, int] = {}
    for source in sources:
        source.stream_id = stream_key(source.stream_id)
        if source.stream_id in seen:
            seen[source.stream_id] += 1
            source.stream_id = f"{source.stream_id}_{seen[source.stream_id]}"
        else:
            seen[source.stream_id] = 0


def _same_source(stored: str, current: str) -> bool:
    """Whether a stream in the store came from this input (earlier stores kept paths as typed)."""
    return stored == current or Path(stored).absolute() == Path(current)


def _stream_attrs(source: Source) -> dict[str, Any]:
    attrs: dict[str, Any] = {"source": source.describe(), "fps": source.fps}
    items = source.items()
    if items is not None:
        attrs["items"] = items  # still images: frame_index -> file
    return attrs


class _Stream:
    def __init__(self, actor: Any, first_sequence: int, written: int) -> None:
        self.actor = actor
        self.decode_pending = False
        self.ended: EndOfStream | None = None  # how the decoder's source ended
        self.results: dict[int, tuple[int, Any]] = {}  # sequence -> (size, result ref), not yet written
        self.next_sequence = first_sequence  # batches before it are in the store already (resume)
        # rows are written one after another: a still image that cannot be decoded leaves no empty
        # row (its frame index is simply absent), so the row is not always the frame index
        self.next_row = written
        self.unscored = 0  # decoded batches queued for or inside a replica

    @property
    def finished(self) -> bool:
        return self.ended is not None and self.unscored == 0 and not self.results


class _ScoringRun:
    """The driver's event loop: keeps replicas busy, decoders just ahead, writes in frame order."""

    def __init__(self, sources: list[Source], model: Any, arrays: dict, settings: ScoreSection, writer: Any,
                 replicas: list, decoders: list, report: RunReport, progress: bool) -> None:
        self.model, self.arrays, self.settings = model, arrays, settings
        self.writer, self.replicas, self.report = writer, replicas, report
        self.free_decoders = list(decoders)  # at most one source per decoder at a time
        self.capacity = settings.replicas * settings.in_flight_per_replica
        self.waiting = deque(sources)
        self.active: dict[str, _Stream] = {}
        self.ready: deque[tuple[str, BatchHeader, Any]] = deque()  # decoded batches waiting for a replica
        self.decode_refs: dict[Any, tuple[str, Any]] = {}
        self.score_refs: dict[Any, tuple[str, BatchHeader, int]] = {}
        self.replica_load = [0] * len(replicas)
        self.write_refs: deque = deque()
        known = all(s.frame_count for s in sources)
        self.bar = tqdm(total=sum(s.frame_count for s in sources) if known else None, desc="scoring",
                        unit="frame", disable=not progress)

    def run(self) -> None:
        try:
            self._start_streams()
            while self.active or self.waiting:
                self._request_decodes()
                self._dispatch()
                pending = list(self.decode_refs) + list(self.score_refs)
                if not pending:
                    self._settle()
                    continue
                ref = ray.wait(pending, num_returns=1)[0][0]
                if ref in self.decode_refs:
                    self._on_decoded(ref)
                else:
                    self._on_scored(ref)
                self._start_streams()
        finally:
            self.bar.close()
            self._close_unfinished()

    def _start_streams(self) -> None:
        while self.waiting and self.free_decoders:
            source = self.waiting.popleft()
            self.report.streams[source.stream_id] = stream_report = StreamReport(source.describe())
            stored = ray.get(self.writer.stored_stream.remote(source.stream_id))
            if stored is not None and stored.source is not None and not _same_source(stored.source, source.describe()):
                stream_report.error = (f"{source.describe()}: the store's stream {source.stream_id!r} was scored from "
                                       f"{stored.source}; score into another store, or --overwrite")
                continue  # what the store holds stays as it is
            if stored is not None and stored.complete:
                stream_report.skipped = True
                self.bar.update(source.frame_count or 0)
                continue
            done = stored.written if stored is not None else 0
            ray.get(self.writer.open_stream.remote(source.stream_id, self.arrays, self.settings.batch_size,
                                                   source.frame_count, _stream_attrs(source)))
            self.bar.update(done)
            stream_report.frames = done
            actor = self.free_decoders.pop()
            actor.open.remote(source, self.model.window_length, self.settings.batch_size, self.model.image_size,
                              self.model.channels, done)
            self.active[source.stream_id] = _Stream(actor, done // self.settings.batch_size, done)

    def _request_decodes(self) -> None:
        for stream_id, stream in self.active.items():
            if stream.ended is None and not stream.decode_pending and len(self.ready) < self.capacity:
                header_ref, batch_ref = stream.actor.next_batch.remote()
                self.decode_refs[header_ref] = (stream_id, batch_ref)
                stream.decode_pending = True

    def _dispatch(self) -> None:
        while self.ready and sum(self.replica_load) < self.capacity:
            stream_id, header, batch_ref = self.ready.popleft()
            target = min(range(len(self.replicas)), key=self.replica_load.__getitem__)
            self.replica_load[target] += 1
            self.score_refs[self.replicas[target].score.remote(batch_ref)] = (stream_id, header, target)

    def _on_decoded(self, ref: Any) -> None:
        stream_id, batch_ref = self.decode_refs.pop(ref)
        stream = self.active[stream_id]
        stream.decode_pending = False
        try:
            header = ray.get(ref)
        except ray.exceptions.RayTaskError as failure:  # a decoder bug or a library error: this stream only
            cause = failure.cause if isinstance(failure.cause, Exception) else failure
            reason = f"{self.report.streams[stream_id].source}: decoding failed ({type(cause).__name__}: {cause})"
            header = EndOfStream(stream_id, 0, reason.splitlines()[0])
        if isinstance(header, EndOfStream):
            stream.ended = header
            self._flush(stream_id)
        else:
            stream.unscored += 1
            self.ready.append((stream_id, header, batch_ref))

    def _on_scored(self, ref: Any) -> None:
        stream_id, header, target = self.score_refs.pop(ref)
        self.replica_load[target] -= 1
        stream = self.active[stream_id]
        stream.unscored -= 1
        stream.results[header.sequence] = (header.size, ref)
        self.report.streams[stream_id].frames += header.size
        self.bar.update(header.size)
        self._flush(stream_id)

    def _flush(self, stream_id: str) -> None:
        """Send the stream's results that are next in frame order to the writer; close it when done."""
        stream = self.active[stream_id]
        while stream.next_sequence in stream.results:
            size, result_ref = stream.results.pop(stream.next_sequence)
            self.write_refs.append(self.writer.write.remote(stream_id, stream.next_row, result_ref))
            stream.next_row += size
            stream.next_sequence += 1
        while len(self.write_refs) > 2 * self.capacity:
            ray.get(self.write_refs.popleft())
        if stream.finished:
            self._close(stream_id, stream.ended.error, [*stream.ended.warnings, *self._too_short(stream_id)])

    def _too_short(self, stream_id: str) -> list[str]:
        """A warning for a stream that ended cleanly before one full window: it has no score."""
        ended, needed = self.active[stream_id].ended, self.model.window_length
        if ended.error is None and ended.frames < needed:
            source = self.report.streams[stream_id].source
            warning = f"{source}: {ended.frames} frame(s), fewer than the {needed} of the model's window: no frame is scored"
            return [warning]
        return []

    def _close(self, stream_id: str, error: str | None, warnings: list[str] | None = None) -> None:
        while self.write_refs:
            ray.get(self.write_refs.popleft())
        ray.get(self.writer.close_stream.remote(stream_id, error, warnings or []))
        self.report.streams[stream_id].error = error
        self.report.streams[stream_id].warnings = warnings or []
        self.free_decoders.append(self.active.pop(stream_id).actor)

    def _settle(self) -> None:
        """Nothing in flight: finish what can be finished, start what waits, or fail loudly."""
        state = (tuple(self.active), len(self.waiting))
        for stream_id in list(self.active):
            self._flush(stream_id)
        self._start_streams()
        if (tuple(self.active), len(self.waiting)) == state:
            raise RuntimeError(f"scoring stalled: streams {sorted(self.active)} wait on nothing")

    def _close_unfinished(self) -> None:
        """After an interruption or error: keep every frame already written, mark the streams."""
        for stream_id in list(self.active):
            self._close(stream_id, "interrupted")


def score_sources(specs: list[str], checkpoint: str, out: str | Path, settings: ScoreSection,
                  mode: str = "create", address: str | None = None, progress: bool = True,
                  max_frames: int | None = None, max_active_streams: int | None = None,
                  expected_model: str | None = None, connect_timeout_s: float = 0.0) -> RunReport:
    """Score every stream of ``specs`` into the zarr store ``out``; returns what was written.

    Every input stands alone: one that cannot be opened, or a stream that breaks, is reported in
    the RunReport (``failed``, a stream's ``error``) and the others are scored and kept. No store
    is created when no input gives a stream. Raises StoreError / CheckpointError-like
    AnomstreamErrors for the store and the checkpoint, which concern the whole run.
    """
    payload = read_checkpoint(checkpoint, expected_model)
    model = build_model(payload["model"], checkpoint_params(payload, checkpoint))
    options = SourceOptions(max_frames, still_images=model.window_length == 1, connect_timeout_s=connect_timeout_s)
    inputs = resolve_inputs(specs, options)
    report = RunReport(Path(out), failed=inputs.failed, left_out=inputs.left_out)
    if not inputs.sources:
        return report
    _unique_ids(inputs.sources)
    arrays = result_arrays((model.image_size, model.image_size), list(model.term_weights))
    run_attrs = {
        "model": model.name, "checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint),
        "config": {"model": payload["params"], "score": settings.model_dump()},
        "term_weights": model.term_weights, "window_length": model.window_length,
        "anomstream_version": pipeline.__version__,
    }
    ensure_ray(address)
    writer = WriterActor.options(num_cpus=SMALL_CPU).remote()
    ray.get(writer.open.remote(str(out), run_attrs, mode))
    ray.get(writer.note_inputs.remote([r.reason for r in inputs.failed], [r.reason for r in inputs.left_out]))
    decoder_count = min(len(inputs.sources), max_active_streams or settings.replicas + 1)
    replica_options, threads = _replica_options(settings, helper_cpus=(decoder_count + 1) * SMALL_CPU)
    replicas = [ReplicaActor.options(**replica_options).remote(str(checkpoint), threads) for _ in range(settings.replicas)]
    decoders = [DecodeActor.options(num_cpus=SMALL_CPU).remote() for _ in range(decoder_count)]
    try:
        devices = ray.get([replica.device.remote() for replica in replicas])
        ray.get([decoder.ready.remote() for decoder in decoders])
        report.replicas, report.device = len(replicas), devices[0]
        started = time.time()  # actors are up: from here the clock measures throughput
        _ScoringRun(inputs.sources, model, arrays, settings, writer, replicas, decoders, report, progress).run()
        report.seconds = time.time() - started
        report.replica_busy = [busy / max(report.seconds, 1e-9) for busy in ray.get([r.busy.remote() for r in replicas])]
    finally:
        for actor in (*replicas, *decoders, writer):
            ray.kill(actor)
    return report
