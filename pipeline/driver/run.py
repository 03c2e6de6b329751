"""Scoring run on Ray: decode actors -> model replicas -> writers, with bounded in-flight work.

This module sets a run up (checkpoint, inputs, store, actors) and hands it to the event loop
(:mod:`pipeline.driver.loop`). Results are written in frame order per stream whichever replica
finished first.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import pipeline
from models.registry import build_model
from pipeline.backends.choice import BackendChoice, choose_backend
from pipeline.calibration.stored import run_calibration
from pipeline.checkpoint import checkpoint_params, model_from_payload, read_checkpoint_and_hash, set_reference_maps
from pipeline.config import ScoreSection
from pipeline.driver.loop import ScoringLoop, Workers
from pipeline.driver.ray_setup import ensure_ray
from pipeline.driver.report import RunReport
from pipeline.driver.resume import nothing_to_resume
from pipeline.driver.writers import WriterSet
from pipeline.errors import AnomstreamError, first_line
from pipeline.events.recorder import EventOptions, event_settings
from pipeline.sources.base import Source
from pipeline.sources.resolve import SourceOptions, resolve_inputs
from pipeline.store import check_target, result_arrays, stream_key
from pipeline.store.location import credential_environment, is_url
from pipeline.stream.live import LiveOptions
from pipeline.view.server import LiveView, check_port
from workers.decoder import DecodeActor
from workers.replica import ReplicaActor
from workers.writer import WriterActor

SMALL_CPU = 0.05  # decode and writer actors mostly wait; reserving whole CPUs would starve replicas
REPLICA_RESTARTS = 3  # Ray restarts a lost replica process this often (then the loop replaces the actor)


def _replica_options(settings: ScoreSection, helper_cpus: float, gpu: bool = True) -> tuple[dict[str, Any], int | None]:
    """Ray options and threads of a replica: a GPU fraction when the cluster has GPUs (and ``gpu``:
    the backend can use one), else an equal share of the CPUs left by the decoders and the writer
    (so that nothing pends)."""
    resources = ray.cluster_resources()
    restartable = {"max_restarts": REPLICA_RESTARTS, "max_task_retries": REPLICA_RESTARTS, "scheduling_strategy": "SPREAD"}
    if gpu and resources.get("GPU", 0) >= settings.gpu_fraction:
        return {"num_gpus": settings.gpu_fraction, "num_cpus": SMALL_CPU, **restartable}, settings.replica_threads
    cpus = resources.get("CPU", 1.0)
    share = max(SMALL_CPU, (cpus - helper_cpus) / settings.replicas)
    threads = settings.replica_threads or max(1, int(cpus // settings.replicas))
    return {"num_cpus": min(settings.replica_cpus, share), **restartable}, threads


def _backend(settings: ScoreSection, payload: dict[str, Any], checkpoint: str | Path, sha256: str,
             calibrated: Any) -> BackendChoice:
    """What the replicas score with (:func:`pipeline.backends.choice.choose_backend`), checked here
    once (the model is built only when the graph or its check is not cached yet)."""
    reference = calibrated.reference if calibrated else None

    def model() -> Any:
        return set_reference_maps(model_from_payload(payload, checkpoint), reference)

    on_gpu = settings.backend != "torch" and ray.cluster_resources().get("GPU", 0) >= settings.gpu_fraction
    return choose_backend(settings.backend, settings.precision, model, checkpoint, sha256, reference, on_gpu)


def _replica_places(replicas: list, model: list, report: RunReport) -> list[dict[str, Any]]:
    """Each replica's node, process, nice value, device and busy share (``report.replica_busy``,
    seconds scoring / run seconds; a process restarted by Ray counts from its restart). A replica
    lost after its last batch is listed as lost."""
    where = []
    for replica in replicas:
        try:
            busy, at = ray.get([replica.busy.remote(), replica.describe.remote(model)])
        except RayActorError as failure:
            where.append({"lost": str(failure).splitlines()[0]})
            continue
        report.replica_busy.append(busy / max(report.seconds, 1e-9))
        where.append({key: at[key] for key in ("node", "pid", "nice", "device", "backend")}
                     | {"busy": round(report.replica_busy[-1], 4)})
    return where


def _check_rotation(out: str | Path, rotate_s: float | None, writers: int) -> None:
    """A rotating store (``rotate_s``) needs a path and one writer: one-line AnomstreamError otherwise."""
    if rotate_s and is_url(out):
        raise AnomstreamError(f"--rotate: {out}: rotating stores need a path (a store per period is named beside it)")
    if rotate_s and writers > 1:
        raise AnomstreamError(f"--rotate with {writers} writers (--writers, score.writers): a rotating store has one "
                              f"writer (each period's store is opened by the writer that reaches it)")


def _writer_opener(out: str, run_attrs: dict[str, Any], here: Any, *options: Any,
                   flush_s: float) -> Callable[[str, int], tuple[Any, int]]:
    """``open_writer(mode, index)``: a writer actor on the driver's node (``here``) with the store
    open, and its pid. Writer 0 opens the store in ``mode``, the others join it (resume mode) and
    leave the webhook's delivery to writer 0. ``options``: view, rotate_s, calibration payload,
    event settings, environment; ``flush_s`` (:meth:`WriterActor.open`)."""

    def open_writer(mode: str, index: int) -> tuple[Any, int]:
        writer = WriterActor.options(num_cpus=0, scheduling_strategy=here).remote()
        try:
            return writer, ray.get(writer.open.remote(out, run_attrs, mode if index == 0 else "resume", *options,
                                                      deliver=index == 0, flush_s=flush_s))
        except BaseException:
            ray.kill(writer)
            raise

    return open_writer


def _open_writers(open_writer: Callable[[str, int], tuple[Any, int]], mode: str, count: int) -> WriterSet:
    writers = WriterSet([open_writer(mode, 0)])  # first: the others join the store it opened
    try:
        for index in range(1, count):
            writers.add(open_writer(mode, index))
    except BaseException:
        writers.kill()
        raise
    return writers


def _finish(writers: WriterSet, replicas: list, workers: Workers, report: RunReport) -> None:
    """After the last stream closed: the streams' accounting into the report, the event logs closed,
    the run's faults and replicas into the store's root attrs. A writer lost now costs those attrs
    only (every stream is closed and on disk): one warning line."""
    try:
        for stream_id, accounting in writers.accounting().items():
            report.streams[stream_id].accounting = accounting
        report.undelivered = writers.close_events()
        where = _replica_places(replicas, workers.model, report)
        ray.get(writers.root.note_attrs.remote({"faults": report.faults.attrs(), "replicas": where}))
    except RayError as failure:
        print(f"warning: a writer was lost after every stream was closed ({first_line(failure)}); the streams are "
              f"complete, the store's root attrs faults and replicas are not written", file=sys.stderr, flush=True)


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


@contextmanager
def _stop_on_signals(stop: threading.Event, enabled: bool) -> Iterator[Callable[[], None]]:
    """While a live run goes on (from its start: Ray and the model take seconds to come up), SIGINT
    and SIGTERM ask it to stop cleanly (every frame read is written) instead of raising; a second
    signal interrupts at once. Yields ``install``, to call again after ``ray.init`` (which sets
    handlers of its own)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def handle(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    def install() -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, handle)

    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    install()
    try:
        yield install
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def score_sources(specs: list[str], checkpoint: str, out: str | Path, settings: ScoreSection,
                  mode: str = "create", address: str | None = None, progress: bool = True,
                  max_active_streams: int | None = None, expected_model: str | None = None,
                  source_options: SourceOptions | None = None, live: LiveOptions | None = None,
                  duration_s: float | None = None, view: tuple[str, int] | None = None,
                  rotate_s: float | None = None, calibration: str | None = None,
                  events: EventOptions | None = None, stream_ids: list[str | None] | None = None) -> RunReport:
    """Score every stream of ``specs`` into the zarr store ``out``; returns what was written.

    Every input stands alone: one that cannot be opened, or a stream that breaks, is reported in
    the RunReport (``failed``, a stream's ``error``) and the others are scored and kept. No store
    is created when no input gives a stream. Raises StoreError / CheckpointError-like
    AnomstreamErrors for the store and the checkpoint, which concern the whole run.

    Live sources (cameras, recordings played live) are all read at once, each by its own decoder,
    as ``live`` says (policy, max latency, frozen feeds); ``duration_s`` ends them after that many
    seconds, and so do SIGINT / SIGTERM: every frame read is written and the streams are closed.
    ``view``: (host, port) to serve the live view on while the run goes on (:mod:`pipeline.view.server`);
    ``rotate_s``: one store per period of that many seconds (3600: ``out``-YYYYmmddTHH.zarr, ...).
    ``calibration``: a calibration file (else the checkpoint's own, if any): the stored ``score`` is
    calibrated (:mod:`pipeline.calibration.scores`); ``events``: event options (a threshold from the
    options or the calibration turns scores into events, :mod:`pipeline.events`); ``stream_ids``: one
    per spec (None: the input's own name), e.g. from a manifest.
    """
    out = out if is_url(out) else Path(out).absolute()  # the writer's working folder may be another
    _check_rotation(out, rotate_s, settings.writers)
    payload, sha256 = read_checkpoint_and_hash(checkpoint, expected_model)
    model = build_model(payload["model"], checkpoint_params(payload, checkpoint))
    inputs = resolve_inputs(specs, replace(source_options or SourceOptions(), still_images=model.window_length == 1),
                            stream_ids)
    report = RunReport(out, failed=inputs.failed, left_out=inputs.left_out)
    if not inputs.sources:
        return report
    _unique_ids(inputs.sources)
    arrays = result_arrays((model.image_size, model.image_size), model.term_names)
    calibrated = run_calibration(payload, sha256, calibration)
    event_options = event_settings(events or EventOptions(), calibrated.threshold if calibrated else None, out)
    run_attrs = {
        "model": model.name, "checkpoint": str(checkpoint), "checkpoint_sha256": sha256,
        "score_kind": "calibrated" if calibrated else "raw",
        "calibration": calibrated.summary() if calibrated else None,
        "events": asdict(event_options.rule) if event_options else None,
        "config": {"model": payload["params"], "score": settings.model_dump()},
        "term_weights": model.term_weights, "window_length": model.window_length, "precision": settings.precision,
        "anomstream_version": pipeline.__version__,
    }
    live_sources = sum(source.is_live for source in inputs.sources)  # each read all along by a decoder of its own
    if live_sources and mode == "resume":
        raise AnomstreamError("--resume: a live stream cannot continue a store (the frames in between are gone); "
                              "write a new --out, or --rotate hour|day for one store per period")
    if not rotate_s:
        check_target(out, mode)  # before Ray starts (a rotating store takes a free name of its own)
    if mode == "resume" and not rotate_s and not inputs.failed:
        unchanged = nothing_to_resume(out, inputs.sources, run_attrs)
        if unchanged is not None:  # no run: no Ray, and the store keeps the last run's attrs
            report.streams = unchanged
            return report
    report.started = True
    if view is not None:
        check_port(*view)
    stop = threading.Event()
    with _stop_on_signals(stop, enabled=live_sources > 0) as install:
        ensure_ray(address)
        install()
        # the store is written on this machine (--out is a path here), whichever node the replicas are on
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        # no CPU asked: a head node started with --num-cpus 0 (a common set-up) runs it too
        backend = _backend(settings, payload, checkpoint, sha256, calibrated)  # before the store is touched
        report.backend = backend
        # an object store's credentials as this process has them, whatever the node's environment
        environment = credential_environment() if is_url(out) else None

        open_writer = _writer_opener(str(out), run_attrs, here, view is not None, rotate_s,
                                     calibrated.to_payload() if calibrated else None, event_options, environment,
                                     flush_s=settings.flush_s)
        decoder_count = min(len(inputs.sources), max(live_sources, max_active_streams or settings.replicas + 1))
        replica_options, threads = _replica_options(settings, helper_cpus=(decoder_count + 1) * SMALL_CPU,
                                                    gpu=backend.backend == "torch")
        workers = Workers(
            model=[ray.put((payload, calibrated.reference if calibrated else None, backend))],  # read once, here
            new_replica=lambda: ReplicaActor.options(**replica_options).remote(threads),
            new_decoder=lambda: DecodeActor.options(num_cpus=SMALL_CPU).remote(),
            new_writer=None if rotate_s else lambda index: open_writer("resume", index))
        replicas: list = []
        decoders: list = []
        writers: WriterSet | None = None
        live_view = None
        try:
            # started before the writers open the store: their processes start (and import torch) meanwhile
            for _ in range(settings.replicas):
                replicas.append(workers.new_replica())
            for _ in range(decoder_count):
                decoders.append(workers.new_decoder())
            workers.replicas, workers.decoders = replicas, decoders
            writers = _open_writers(open_writer, mode, settings.writers)
            ray.get(writers.root.note_inputs.remote([r.reason for r in inputs.failed], [r.reason for r in inputs.left_out]))
            ray.get(writers.root.note_attrs.remote({"backend": {"name": backend.backend, "precision": backend.precision,
                                                                "note": backend.note}, "writers": settings.writers}))
            if view is not None:
                live_view = LiveView(writers.view_snapshot, *view)
                print(f"live view: {live_view.url}", file=sys.stderr, flush=True)
            placed = ray.get([replica.describe.remote(workers.model) for replica in replicas])
            ray.get([decoder.ready.remote() for decoder in decoders])
            report.replicas, report.device = len(replicas), placed[0]["device"]
            for where in placed:
                report.nodes[where["node"]] = report.nodes.get(where["node"], 0) + 1
            warnings = {where["warning"] for where in placed if where["warning"]}
            warnings |= {f"replica on node {where['node'][:8]}: {where['backend_note']}" for where in placed
                         if where["backend"] != backend.backend}
            for warning in sorted(warnings):
                print(f"warning: {warning}", file=sys.stderr, flush=True)
            started = time.time()  # actors are up: from here the clock measures throughput
            deadline = time.monotonic() + duration_s if duration_s is not None else None
            live = live or LiveOptions()
            if live.batch is None:
                live = replace(live, batch=1 if report.device == "cpu" else settings.batch_size)
            loop = ScoringLoop(inputs.sources, model, arrays, settings, writers, workers, report, progress,
                               live, deadline, stop, view=view is not None, events=event_options is not None)
            loop.run()
            report.seconds = time.time() - started
            _finish(writers, replicas, workers, report)
        finally:
            if live_view is not None:
                live_view.close()
            for actor in (*replicas, *decoders, *(writers.actors if writers is not None else ())):
                ray.kill(actor)
    return report
