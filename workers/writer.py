"""Writer actor: writes its streams into a store (one writer per stream); receives batches in frame order."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from ..pipeline.calibration.scene import SceneCheck
from ..pipeline.calibration.scores import Calibration, StreamCalibrator
from ..pipeline.errors import StoreError, first_line
from ..pipeline.events.recorder import EventRecorder, EventSettings
from ..pipeline.sources.base import LiveStatus
from ..pipeline.store import ArraySpec, FrameStatus, ResultStore, StoredStream, StreamAccounting
from ..pipeline.store.results import FLUSH_S
from ..pipeline.store.rotation import RotatingStore
from ..pipeline.stream.rows import unscored_rows
from ..pipeline.stream.windows import WindowBatch
from ..pipeline.view.state import StreamView
from .priority import raise_priority


def _store_errors(method):
    """An OS error while the store is written (a full disk, a read-only or vanished mount) becomes
    a StoreError whose one line names the store and the cause, the cause first; the driver prints
    it as it is."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as error:
            cause = error.strerror or first_line(error)
            raise StoreError(f"{self.path}: cannot write the store ({cause}); what is written is kept") from None

    return guarded


@dataclass(frozen=True)
class WriterConfig:
    """How a writer opens its store: ``path`` (a path or an object-store URL), ``run_attrs`` (the
    store's root attrs), ``mode`` (create, overwrite or resume; a writer that joins a store another
    opened: resume). ``view``: also keep what the live view shows of each stream
    (:meth:`WriterActor.view_snapshot`); ``rotate_s``: one store per period of that many seconds
    (:mod:`pipeline.store.rotation`); ``calibration``: the stored ``score`` becomes the calibrated one
    (:mod:`pipeline.calibration.scores`; numpy arrays only, not its torch payload: a writer never
    imports torch, 1.5 CPU-s and ~300 MB of a 2-core node); ``events``: detect and keep
    events, and with ``deliver`` send the webhook's outbox (one writer of a run does; the others
    only put messages in it); ``environment``: variables set in the writer's process first (an
    object store's credentials, as the driver has them); ``flush_s``: a live stream's rows wait in
    memory at most this long before they are written, a recording's for 256 rows (:class:`ResultStore`)."""

    path: str
    run_attrs: dict[str, Any]
    mode: str
    view: bool = False
    rotate_s: float | None = None
    calibration: Calibration | None = None
    events: EventSettings | None = None
    environment: dict[str, str] | None = None
    deliver: bool = True
    flush_s: float = FLUSH_S


@ray.remote
class WriterActor:
    """Created empty; ``open`` opens the store so its errors reach the caller as StoreError."""

    def open(self, config: WriterConfig) -> int:
        """Open the store as ``config`` says; returns this process's pid (the driver waits for it
        to be gone before a successor opens the store)."""
        self.path = config.path
        return self._open(config)

    @_store_errors
    def _open(self, config: WriterConfig) -> int:
        raise_priority()
        os.environ.update(config.environment or {})
        self.store = RotatingStore(config.path, config.run_attrs, config.mode, config.rotate_s, flush_s=config.flush_s) \
            if config.rotate_s else ResultStore(config.path, config.run_attrs, config.mode, config.flush_s)
        self.specs: dict[str, dict[str, ArraySpec]] = {}
        self.views: dict[str, StreamView] | None = {} if config.view else None
        self.calibration = config.calibration
        self.calibrators: dict[str, StreamCalibrator] = {}
        self.scenes: dict[str, SceneCheck] = {}  # per calibrated stream: does the model fit its scene
        self.ready: set[str] = set()  # streams whose open_stream finished: the only ones written or closed
        created = self.store.root.attrs.get("created") if isinstance(self.store, ResultStore) else None
        run_key = f"{config.path}|{created or time.time_ns()}"  # a resumed store keeps its events' ids
        self.events = EventRecorder(config.events, run_key, fresh=config.mode == "overwrite", deliver=config.deliver) \
            if config.events is not None else None
        return os.getpid()

    @_store_errors
    def note_inputs(self, failed: list[str], left_out: list[str]) -> None:
        self.store.note_inputs(failed, left_out)

    @_store_errors
    def note_attrs(self, attrs: dict[str, Any]) -> None:
        """Run-level facts into the store's root attrs (``faults``, ``replicas``)."""
        self.store.note_attrs(attrs)

    def stored_stream(self, stream_id: str) -> StoredStream | None:
        return self.store.stored_stream(stream_id)

    @_store_errors
    def open_stream(self, stream_id: str, arrays: dict[str, ArraySpec], chunk: int,
                    frame_count: int | None, attrs: dict[str, Any]) -> None:
        """Open (or reopen) a stream. The driver does not wait for it: the stream's writes queue
        behind it, and are refused when it failed (:meth:`_check_ready`)."""
        self.ready.discard(stream_id)
        self.store.open_stream(stream_id, arrays, chunk, frame_count, attrs)
        self.specs[stream_id] = arrays
        if self.views is not None:
            self.views[stream_id] = StreamView()
        if self.calibration is not None:
            self.calibrators[stream_id] = StreamCalibrator(self.calibration)
            self.scenes.pop(stream_id, None)
            if attrs.get("scene_check", True):
                self.scenes[stream_id] = SceneCheck(self.calibration.threshold, self.calibration.false_alarm_rate,
                                                    self.calibration.smoothing)
            if isinstance(self.store, ResultStore):  # a resumed stream: the trailing window goes on from its rows
                names = ["frame_index", "status", "score_raw", *(name for name in arrays if name.startswith("term_"))]
                self.calibrators[stream_id].smoothed(*_calibration_inputs(self.store.last_rows(
                    stream_id, self.calibration.smoothing, names)))
        if self.events is not None:
            own = attrs.get("event_rule") or {}
            self.events.open_stream(stream_id, own.get("threshold"), own.get("low_threshold"))
        self.ready.add(stream_id)

    def _check_ready(self, stream_id: str) -> None:
        """Rows and closes of a stream whose opening failed part-way (the store opened it, its
        calibrator or event detector did not start) never reach the disk."""
        if stream_id not in self.ready:
            raise StoreError(f"{self.path}: stream {stream_id} is not open in this writer (its opening failed); "
                             f"its rows are not written")

    @_store_errors
    def write(self, stream_id: str, row: int, values: dict[str, np.ndarray], batch: WindowBatch | None = None) -> int:
        """Rows [row, row + n) of a stream (store rows: a frame index may skip, rows do not);
        ``batch``: the batch they were scored from (for the live view's frame and event snapshots;
        None: neither is taken from these rows)."""
        self._check_ready(stream_id)
        if stream_id in self.calibrators:
            values = {**values, "score": self.calibrators[stream_id](*_calibration_inputs(values))}
            self._judge_scene(stream_id, values)
        self.store.write(stream_id, row, values)
        if self.events is not None:
            self.store.add_events(stream_id, self.events.feed(stream_id, values, batch))
        if self.views is not None:
            self.views[stream_id].add_rows(values)
            if batch is not None:
                self.views[stream_id].add_frame(batch, values)
        return row + len(values["score"])

    def _judge_scene(self, stream_id: str, values: dict[str, np.ndarray]) -> None:
        """Whether the model fits the stream's scene (:mod:`pipeline.calibration.scene`): a change
        goes into the stream's ``scene`` attr and, misfit, drift or fitting again, to the event sinks."""
        check = self.scenes.get(stream_id)
        if check is None:  # not scene-checked (a labelled test split's anomaly class)
            return
        before = check.state
        verdict = check.feed(values["frame_index"], values["score"], values["status"] == FrameStatus.SCORED)
        if verdict is None:
            return
        self.store.accounting[stream_id].scene = verdict.to_dict()
        if self.events is not None and (verdict.state != "fits" or before in ("misfit", "drift")):
            self.events.scene(stream_id, verdict.to_dict())

    def write_unscored(self, stream_id: str, row: int, batch: WindowBatch, dropped: bool) -> int:
        """A batch that no replica scores: nothing in it to score, or dropped (policy ``latest``)."""
        self._check_ready(stream_id)
        return self.write(stream_id, row, unscored_rows(batch, self.specs[stream_id], dropped))

    @_store_errors
    def add_gaps(self, stream_id: str, gaps: list[dict[str, Any]]) -> None:
        self.store.add_gaps(stream_id, gaps)

    @_store_errors
    def set_camera(self, stream_id: str, status: LiveStatus) -> None:
        """A camera's state from its decoder: in the stream's attrs (and the view) at once, and
        ``camera_down`` / ``camera_up`` messages through the event sinks when it leaves or regains
        ``live``."""
        self.store.set_camera(stream_id, status)
        if self.events is not None:
            self.events.camera(stream_id, status)

    @_store_errors
    def flush_due(self) -> None:
        """Rows that waited long enough onto disk (a stream between batches writes nothing)."""
        self.store.flush_due()

    @_store_errors
    def flush_all(self) -> None:
        """Every row that arrived onto disk: the run ends without closing the streams (a writer
        lost, an error), or this writer is about to be replaced."""
        self.store.flush_all()

    def view_snapshot(self) -> dict[str, dict[str, Any]]:
        """Per stream (open or closed in this run): its accounting attrs, the view's summary (trace,
        fps, shown frame's time and score) and the shown frame as JPEG bytes (``jpeg``, or None) with,
        over a camera's picture, its map as a translucent PNG (``map_png``, or None)."""
        accounting = self.store.accounting
        return {stream_id: {**accounting.get(stream_id, StreamAccounting(live=True)).attrs(), **view.summary(),
                            **(self.events.view(stream_id) if self.events is not None else {"threshold": None, "events": []}),
                            "jpeg": view.jpeg(), "map_png": view.map_png()}
                for stream_id, view in (self.views or {}).items()}

    def accounting(self) -> dict[str, dict[str, Any]]:
        """Per open stream: its accounting attrs (frame counts, latency, gaps) as of now."""
        return {stream_id: accounting.attrs() for stream_id, accounting in self.store.accounting.items()}

    def take_events(self) -> list[dict[str, Any]]:
        """Event messages (``type`` start / end) since the last call, for the driver to print."""
        return self.events.take_news() if self.events is not None else []

    @_store_errors
    def close_events(self, wait_s: float = 5.0) -> int:
        """End of the run: flush the event log, give the webhook ``wait_s`` s; returns messages left
        in the outbox (delivered by the next run with the same events folder and a webhook)."""
        return self.events.close(wait_s) if self.events is not None else 0

    @_store_errors
    def close_stream(self, stream_id: str, error: str | None = None, warnings: list[str] | None = None,
                     stopped: bool = False) -> None:
        self._check_ready(stream_id)
        if self.events is not None:
            self.store.add_events(stream_id, self.events.close_stream(stream_id))
        self.store.close_stream(stream_id, error, warnings, stopped)


def _calibration_inputs(values: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(frame_index, terms with the raw score as ``score``, scored) of rows, for a StreamCalibrator."""
    terms = {name[len("term_"):]: data for name, data in values.items() if name.startswith("term_")}
    return values["frame_index"], {**terms, "score": values["score_raw"]}, values["status"] == FrameStatus.SCORED
