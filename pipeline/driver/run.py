"""Scoring run on Ray: decode actors -> model replicas -> writers, with bounded in-flight work.

This module sets a run up from its :class:`~pipeline.driver.plan.RunPlan` (checkpoint, inputs,
store, actors) and hands it to the event loop (:mod:`pipeline.driver.loop`). Results are written
in frame order per stream whichever replica finished first.
"""

from __future__ import annotations

import math
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ...models.registry import build_model
from ...workers.writer import WriterConfig
from .. import __version__
from ..backends.choice import BackendChoice, GraphCache, choose_backend
from ..calibration.stored import run_calibration
from ..checkpoint import checkpoint_params, model_from_payload, read_checkpoint_and_hash, set_reference_maps
from ..config import ScoreSection
from ..errors import AnomstreamError, cause_line
from ..events.mqtt import check_topics
from ..events.recorder import EventSettings, event_settings, events_folder, outbox_depth
from ..sources.base import Source
from ..sources.cameras_file import apply_cameras
from ..sources.resolve import Inputs, resolve_inputs
from ..store import check_target, result_arrays, stream_key
from ..store.location import credential_environment, is_url
from ..store.lock import StoreLock
from ..store.results import stored_precision
from ..stream.live import LiveOptions
from ..stream.windows import WindowShape
from ..view.server import VIEW_PICTURE_SIZE, LiveView, reserve_port
from .actors import SMALL_CPU, ActorPool, Placement
from .loop import ScoringLoop
from .opening import StreamSetup
from .plan import RunPlan
from .ray_setup import ensure_ray
from .report import RunReport
from .reporter import Reporter, reporter_for
from .resume import nothing_to_resume
from .signals import stop_on_signals
from .writers import WriterSet

REPLICA_RESTARTS = 3  # Ray restarts a lost replica process this often (then the loop replaces the actor)


def _replica_options(settings: ScoreSection, helper_cpus: float, gpu: bool = True) -> tuple[dict[str, Any], int | None]:
    """Ray options and threads of a replica: a GPU fraction when the cluster has GPUs (and ``gpu``:
    the backend can use one, and ``settings.device`` is not ``cpu``), else an equal share of the CPUs
    left by the decoders and the writer (so that nothing pends)."""
    resources = ray.cluster_resources()
    restartable = {"max_restarts": REPLICA_RESTARTS, "max_task_retries": REPLICA_RESTARTS, "scheduling_strategy": "SPREAD"}
    if gpu and settings.device != "cpu" and resources.get("GPU", 0) >= settings.gpu_fraction:
        return {"num_gpus": settings.gpu_fraction, "num_cpus": SMALL_CPU, **restartable}, settings.replica_threads
    cpus = resources.get("CPU", 1.0)
    share = max(SMALL_CPU, (cpus - helper_cpus) / settings.replicas)
    threads = settings.replica_threads or max(1, int(cpus // settings.replicas))
    return {"num_cpus": min(settings.replica_cpus, share), **restartable}, threads


def check_gpu_placement(settings: ScoreSection, gpus_per_node: list[float], gpu: bool = True) -> None:
    """Replicas that ask for a GPU fraction must all fit the cluster's GPUs, or the run would wait
    for ever on those left pending: AnomstreamError (one line, before anything starts) naming
    ``--replicas``, the GPUs seen and ``score.gpu_fraction``. ``gpus_per_node``: each alive node's
    GPUs; ``gpu``: the backend can use one (else, or with ``--device cpu``, replicas take CPUs, which
    never pend)."""
    fraction = settings.gpu_fraction
    if not gpu or settings.device == "cpu" or sum(gpus_per_node) < fraction:
        return
    fits = sum(math.floor(gpus / fraction + 1e-6) for gpus in gpus_per_node)  # a fraction never spans two GPUs
    if fits == 0:
        raise AnomstreamError(f"score.gpu_fraction {fraction:g}: no node of the cluster has that much of one GPU "
                              f"(GPUs per node: {', '.join(f'{gpus:g}' for gpus in gpus_per_node)}); pass a smaller "
                              f"score.gpu_fraction")
    if settings.replicas > fits:
        raise AnomstreamError(f"--replicas {settings.replicas}: the cluster's {sum(gpus_per_node):g} GPU(s) hold "
                              f"{fits} replica(s) of score.gpu_fraction {fraction:g}; pass --replicas {fits} or fewer, "
                              f"or a smaller score.gpu_fraction (e.g. {_fraction_for(settings.replicas, gpus_per_node)})")


def check_replica_device(settings: ScoreSection, gpus_per_node: list[float]) -> None:
    """``score.device`` (``--device``) against the cluster, before anything starts: ``auto`` and ``cpu``
    always place; ``cuda:N`` is refused (a replica scores on the GPU Ray gives it), and so is ``cuda``
    with a backend that scores on the CPU or a cluster without the GPU fraction a replica asks for
    (AnomstreamError, one line naming ``--device``). ``gpus_per_node``: each alive node's GPUs."""
    device, fraction, gpus = settings.device, settings.gpu_fraction, sum(gpus_per_node)
    if device.startswith("cuda:"):
        raise AnomstreamError(f"--device {device}: a replica scores on the GPU Ray gives it, not on one chosen by "
                              f"number; pass --device cuda")
    if device != "cuda":
        return
    if settings.backend not in ("torch", "auto"):
        raise AnomstreamError(f"--device cuda: --backend {settings.backend} scores on the CPU; pass --backend torch "
                              f"or auto")
    if gpus < fraction:
        having = "no GPU" if gpus == 0 else f"{gpus:g} GPU, less than score.gpu_fraction {fraction:g}"
        raise AnomstreamError(f"--device cuda: the Ray cluster has {having}; pass --device cpu or auto")


def _fraction_for(replicas: int, gpus_per_node: list[float]) -> str:
    """A GPU fraction that fits ``replicas`` on the nodes' whole GPUs (shown in the refusal)."""
    whole = sum(math.floor(gpus) for gpus in gpus_per_node) or 1
    return f"{math.floor(100 / math.ceil(replicas / whole)) / 100:g}"


def _backend(settings: ScoreSection, payload: dict[str, Any], checkpoint: str | Path, sha256: str,
             calibrated: Any) -> BackendChoice:
    """What the replicas score with (:func:`pipeline.backends.choice.choose_backend`), checked here
    once (the model is built only when the graph or its check is not cached yet)."""
    reference = calibrated.reference if calibrated else None

    def model() -> Any:
        return set_reference_maps(model_from_payload(payload, checkpoint), reference)

    gpus = ray.cluster_resources().get("GPU", 0)
    on_gpu = settings.backend != "torch" and (settings.device == "cuda" or
                                             settings.device == "auto" and gpus >= settings.gpu_fraction)
    cache = GraphCache.for_run(model, checkpoint, sha256, calibrated, settings.quantization_data)
    return choose_backend(settings.backend, settings.precision, cache, on_gpu)


def _replica_places(replicas: list, model_call: list, report: RunReport) -> list[dict[str, Any]]:
    """Each replica's node, process, nice value, device and busy share (``report.replica_busy``,
    seconds scoring / run seconds; a process restarted by Ray counts from its restart). A replica
    lost after its last batch is listed as lost."""
    where = []
    for replica in replicas:
        try:
            busy, at = ray.get([replica.busy.remote(), replica.describe.remote(model_call)])
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


def _finish(pool: ActorPool, report: RunReport) -> None:
    """After the last stream closed: the streams' accounting into the report, the event logs closed,
    the run's faults and replicas into the store's root attrs. A writer lost now costs those attrs
    only (every stream is closed and on disk): one warning line."""
    writers = pool.writers
    try:
        for stream_id, accounting in writers.accounting().items():
            report.streams[stream_id].accounting = accounting
        report.undelivered = writers.close_events()
        where = _replica_places(pool.replica_actors, pool.model_call, report)
        ray.get(writers.root.note_attrs.remote({"faults": report.faults.attrs(), "replicas": where}))
    except RayError as failure:
        print(f"warning: a writer was lost after every stream was closed ({cause_line(failure)}); the streams are "
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


@dataclass
class _Prepared:
    """What the driver knows of a run before Ray starts: the checkpoint's ``payload`` and its
    ``sha256``, the model's window ``shape``, the inputs, the store's ``arrays`` and root attrs,
    the calibration in force (or None) and the event settings (None: no events)."""

    out: str | Path
    payload: dict[str, Any]
    sha256: str
    shape: WindowShape
    inputs: Inputs
    arrays: dict[str, Any]
    calibrated: Any
    events: EventSettings | None
    run_attrs: dict[str, Any]


def _prepare(plan: RunPlan) -> _Prepared:
    """Read the checkpoint (once), resolve the inputs, choose the calibration and the event
    settings; raises the checkpoint's, the calibration's and the options' one-line errors."""
    out = plan.out if is_url(plan.out) else Path(plan.out).absolute()  # the writer's working folder may be another
    _check_rotation(out, plan.rotate_s, plan.settings.writers)
    payload, sha256 = read_checkpoint_and_hash(plan.checkpoint, plan.expected_model)
    model = build_model(payload["model"], checkpoint_params(payload, plan.checkpoint))
    options = replace(plan.source_options, still_images=model.window_length == 1)
    inputs = resolve_inputs(list(plan.specs), options, list(plan.stream_ids) if plan.stream_ids else None)
    apply_cameras(inputs.sources, list(plan.cameras))
    calibrated = events = None
    if inputs.sources:  # else the run ends here: the inputs' errors are all there is to say
        calibrated = run_calibration(payload, sha256, plan.calibration)
        events = event_settings(plan.events, calibrated.threshold if calibrated else None, out)
        if events is not None and events.mqtt is not None:
            check_topics([source.stream_id for source in inputs.sources], events.mqtt)
        own = [camera.name for camera in plan.cameras if camera.threshold is not None]
        if events is None and own:
            raise AnomstreamError(f"--cameras: camera {own[0]!r} sets a threshold, but this run has no events (an "
                                  f"uncalibrated checkpoint): calibrate it (anomstream calibrate) or pass --event-threshold")
    run_attrs = {
        "model": model.name, "checkpoint": str(plan.checkpoint), "checkpoint_sha256": sha256,
        "score_kind": "calibrated" if calibrated else "raw",
        "calibration": calibrated.summary() if calibrated else None,
        "events": asdict(events.rule) if events else None,
        "config": {"model": payload["params"], "score": plan.settings.model_dump()},
        "term_weights": model.term_weights, "window_length": model.window_length, "precision": plan.settings.precision,
        "anomstream_version": __version__,
    }
    return _Prepared(out, payload, sha256, WindowShape.of(model), inputs,
                     result_arrays((model.image_size, model.image_size), model.term_names), calibrated, events, run_attrs)


def _nothing_to_run(plan: RunPlan, run: _Prepared, report: RunReport) -> bool:
    """Refuse a live resume; check the store's target (before Ray starts); True when a resume
    finds every stream complete or refused (no run: no Ray, the store keeps its attrs)."""
    live_sources = any(source.is_live for source in run.inputs.sources)
    if live_sources and plan.mode == "resume":
        raise AnomstreamError("--resume: a live stream cannot continue a store (the frames in between are gone); "
                              "write a new --out, or --rotate hour|day for one store per period")
    if not plan.rotate_s:
        check_target(run.out, plan.mode)  # a rotating store takes a free name of its own
    if plan.mode == "resume" and not plan.rotate_s and not run.inputs.failed:
        unchanged = nothing_to_resume(run.out, run.inputs.sources, run.run_attrs)
        if unchanged is not None:
            report.streams = unchanged
            return True
    return False


def score_sources(plan: RunPlan, reporter: Reporter | None = None) -> RunReport:
    """Score every stream of ``plan.specs`` into the zarr store ``plan.out``; returns what was written.

    Every input stands alone: one that cannot be opened, or a stream that breaks, is reported in
    the RunReport (``failed``, a stream's ``error``) and the others are scored and kept. No store
    is created when no input gives a stream. Raises StoreError / CheckpointError-like
    AnomstreamErrors for the store and the checkpoint, which concern the whole run.

    Live sources (cameras, recordings played live) are all read at once, each by its own decoder,
    as ``plan.live`` says; ``plan.duration_s`` ends them after that many seconds, and so do SIGINT /
    SIGTERM: every frame read is written and the streams are closed. ``plan.view``: (host, port) to
    serve the live view on (:mod:`pipeline.view.server`); ``plan.rotate_s``: one store per period
    (3600: ``out``-YYYYmmddTHH.zarr, ...). With a calibration (``plan.calibration``, else the
    checkpoint's own) the stored ``score`` is calibrated (:mod:`pipeline.calibration.scores`) and a
    threshold turns scores into events (:mod:`pipeline.events`). ``reporter``: what the run shows as
    it goes (default: the console reporter when ``plan.progress``, else none). The run holds the
    store's lock throughout (:mod:`pipeline.store.lock`): another run on the same store refuses.
    """
    stop = plan.stop or threading.Event()
    run = _prepare(plan)
    report = RunReport(run.out, failed=run.inputs.failed, left_out=run.inputs.left_out)
    if not run.inputs.sources or stop.is_set():  # stopped while it started: nothing read, nothing written
        return report
    _unique_ids(run.inputs.sources)
    live = plan.stop is not None or any(source.is_live for source in run.inputs.sources)
    with StoreLock(run.out):  # one run per store: a second one refuses here, naming this one
        if _nothing_to_run(plan, run, report):
            return report
        report.started = True
        with _reserved(plan) as listeners, stop_on_signals(stop, enabled=live) as install:
            ensure_ray(plan.address)
            install()
            _run_on_ray(plan, run, report, reporter or reporter_for(plan.progress), stop, listeners)
    return report


@contextmanager
def _reserved(plan: RunPlan) -> Iterator[dict[str, socket.socket]]:
    """The sockets bound to ``plan.view`` and ``plan.metrics`` ("--view"/"--metrics" -> socket) from
    the start of the run (Ray's processes take ports as they start, one of them could be this one's);
    closed at its end. Raises AnomstreamError (one line, naming the option) when one cannot be bound."""
    listeners: dict[str, socket.socket] = {}
    if plan.view is not None and plan.view == plan.metrics and plan.view[1]:
        raise AnomstreamError(f"--metrics {plan.metrics[1]}: the port --view serves on (the live view serves /metrics "
                              f"and /healthz too); give another port or leave --metrics out")
    try:
        for option, served in (("--view", plan.view), ("--metrics", plan.metrics)):
            if served is not None:
                listeners[option] = reserve_port(*served, option)
        yield listeners
    finally:
        for listener in listeners.values():
            listener.close()


def _run_on_ray(plan: RunPlan, run: _Prepared, report: RunReport, reporter: Reporter, stop: threading.Event,
                listeners: dict[str, socket.socket]) -> None:
    """Start the actors, run the loop, finish the store's attrs; every actor is killed at the end;
    ``listeners``: the sockets :func:`_reserved` bound for the live view and /metrics."""
    settings, sources = plan.settings, run.inputs.sources
    gpus_per_node = [node["Resources"].get("GPU", 0.0) for node in ray.nodes() if node["Alive"]]
    check_replica_device(settings, gpus_per_node)
    if settings.precision == "auto" and plan.mode == "resume" and not plan.rotate_s:
        settings = settings.model_copy(update={"precision": stored_precision(run.out) or "auto"})  # continue as written
    report.backend = backend = _backend(settings, run.payload, plan.checkpoint, run.sha256, run.calibrated)
    run.run_attrs["precision"] = backend.precision  # what scored, not what was asked for
    check_gpu_placement(settings, gpus_per_node, gpu=backend.backend == "torch")
    live_sources = sum(source.is_live for source in sources)  # each read all along by a decoder of its own
    decoders = min(len(sources), max(live_sources, plan.max_active_streams or settings.replicas + 1))
    replica_options, threads = _replica_options(settings, helper_cpus=(decoders + 1) * SMALL_CPU,
                                                gpu=backend.backend == "torch")
    device = settings.device if "num_gpus" in replica_options else "cpu"  # a replica without a GPU scores on the CPU
    # the store is written on this machine (--out is a path here), whichever node the replicas are on
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    reference = run.calibrated.reference if run.calibrated else None
    model_call = [ray.put((run.payload, reference, backend, device))]  # read once
    with ActorPool(model_call, Placement(replica_options, threads, here), _writer_config(plan, run),
                   writers_replaceable=not plan.rotate_s) as pool:
        pool.start(settings.replicas, decoders)  # their processes start while the writers open the store
        writers = pool.open_writers(settings.writers)
        ray.get(writers.root.note_inputs.remote([r.reason for r in run.inputs.failed],
                                                [r.reason for r in run.inputs.left_out]))
        ray.get(writers.root.note_attrs.remote({"backend": {"name": backend.backend, "precision": backend.precision,
                                                            "note": backend.note}, "writers": settings.writers}))
        with _served(plan, writers, report, reporter, listeners):
            warm = _live_options(plan, settings.batch_size, on_gpu=False).batch  # exported graphs warm up; they run on CPUs
            _place_replicas(pool, report, backend, _batch_sizes(sources, settings.batch_size, warm))
            started = time.time()  # actors are up: from here the clock measures throughput
            deadline = time.monotonic() + plan.duration_s if plan.duration_s is not None else None
            live = _live_options(plan, settings.batch_size, on_gpu=report.device != "cpu")
            setup = StreamSetup(run.shape, run.arrays, settings, live, view=plan.view is not None,
                                events=run.events is not None)
            ScoringLoop(sources, setup, pool, report, reporter, deadline, stop).run()
            report.seconds = time.time() - started
            _finish(pool, report)


def _writer_config(plan: RunPlan, run: _Prepared) -> WriterConfig:
    """How writer 0 opens the store; an object store's credentials go as this process has them,
    whatever the node's environment."""
    return WriterConfig(str(run.out), run.run_attrs, plan.mode, view=plan.view is not None, rotate_s=plan.rotate_s,
                        calibration=run.calibrated, events=run.events,
                        environment=credential_environment() if is_url(run.out) else None,
                        flush_s=plan.settings.flush_s)


@contextmanager
def _served(plan: RunPlan, writers: WriterSet, report: RunReport, reporter: Reporter,
            listeners: dict[str, socket.socket]) -> Iterator[None]:
    """While the run goes on: the live view on ``plan.view`` (with /metrics and /healthz) and
    /metrics and /healthz alone on ``plan.metrics`` (either None: not served), each on the socket
    ``listeners`` holds for its option."""
    servers: list[LiveView] = []
    folder = events_folder(plan.out).absolute()

    def figures() -> dict[str, Any]:
        open_events = list(report.open_events.items())  # one copy: the driver's thread adds streams as events start
        return {"events": report.events, "replica_busy": reporter.busy_shares(), "outbox": outbox_depth(folder),
                "events_open": {stream_id: len(ids) for stream_id, ids in open_events}}

    try:
        if plan.view is not None:
            servers.append(LiveView(writers.view_snapshot, *plan.view, token=plan.view_token, run_figures=figures,
                                    snapshots=folder, listener=listeners["--view"]))
            print(f"live view: {servers[-1].url}", file=sys.stderr, flush=True)
        if plan.metrics is not None:
            servers.append(LiveView(writers.accounting, *plan.metrics, token=plan.view_token, page=False,
                                    run_figures=figures, listener=listeners["--metrics"]))
            print(f"metrics: {servers[-1].url}metrics", file=sys.stderr, flush=True)
        yield
    finally:
        for server in servers:
            server.close()


def _live_options(plan: RunPlan, batch_size: int, on_gpu: bool) -> LiveOptions:
    """The live streams' options for this run: the plan's live batch or, where it leaves that to the
    run, 1 frame per replica call on a CPU (a frame waits for no other) and ``batch_size`` frames on
    a GPU (``on_gpu``: where the replicas found themselves, not what they asked Ray for: a torch
    that sees no CUDA scores on the CPU); with the live view, the camera's own picture."""
    live = plan.live if plan.live.batch is not None else replace(plan.live, batch=batch_size if on_gpu else 1)
    return replace(live, preview_size=VIEW_PICTURE_SIZE) if plan.view is not None else live


def _batch_sizes(sources: list[Source], batch_size: int, live_batch: int) -> tuple[int, ...]:
    """The batch sizes the run's replicas score most: ``batch_size`` for recordings, ``live_batch``
    for live streams; a stream's last batch may be smaller."""
    sizes = {batch_size} if any(not source.is_live for source in sources) else set()
    if any(source.is_live for source in sources):
        sizes.add(live_batch)
    return tuple(sorted(sizes))


def _place_replicas(pool: ActorPool, report: RunReport, backend: BackendChoice, warm_up: tuple[int, ...]) -> None:
    """Wait for the replicas to load the model and score a black batch of each size in ``warm_up``
    (before the run's clock: a runtime's first inference of a shape is slow) and the decoders to
    start; note where each replica runs (``report.nodes``, ``report.device``) and print each
    distinct warning once."""
    placed = ray.get([replica.describe.remote(pool.model_call, warm_up) for replica in pool.replica_actors])
    ray.get([decoder.ready.remote() for decoder in pool.free_decoders])
    report.replicas, report.device = len(placed), placed[0]["device"]
    for where in placed:
        report.nodes[where["node"]] = report.nodes.get(where["node"], 0) + 1
    warnings = {where["warning"] for where in placed if where["warning"]}
    warnings |= {f"replica on node {where['node'][:8]}: {where['backend_note']}" for where in placed
                 if where["backend"] != backend.backend}
    for warning in sorted(warnings):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
