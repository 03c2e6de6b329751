"""A run's events, kept by the writer as rows are written: one detector per stream, a JPEG snapshot
of each event's peak frame with its map, ``events.jsonl``, the webhook outbox, and what the driver
prints. The zarr table is written by the store (:meth:`pipeline.store.ResultStore.add_events`).

Files live in the run's events folder (``S.events/`` beside the store ``S.zarr``):
``events.jsonl`` (one JSON object per line: ``type`` "start" when an event reaches its minimum
length, "end" when it is over), ``<event_id>.jpg`` snapshots, ``outbox/`` (webhook messages not
delivered yet), ``outbox_mqtt/`` (the same for the MQTT broker).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AnomstreamError
from ..sources.base import LiveStatus
from ..store import FrameStatus
from ..store.location import is_url, store_name
from ..stream.windows import WindowBatch
from ..visualize import overlay_jpeg
from . import mqtt, webhook
from .detector import Event, EventDetector, EventRule
from .mqtt import MqttBroker, MqttSender, parse_mqtt
from .outbox import Outbox, Undelivered, waiting_in
from .webhook import Webhook, parse_webhook

RECENT_EVENTS = 5  # event messages per stream the live view lists


OUTBOXES = {"webhook": "outbox", "mqtt": "outbox_mqtt"}  # sink -> its outbox folder in the events folder


SNAPSHOT_SIZE = 480  # an event snapshot's longer side, pixels


def snapshot_caption(event: Event) -> str:
    """``cam1  frame 120  12:00:04 UTC  peak 7.31 > 3.00``: what the snapshot shows (the peak's time
    as UTC for live streams, seconds into the recording otherwise)."""
    when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(event.peak_time)) if event.peak_time > 1e9
            else f"{event.peak_time:.1f} s")
    return f"{event.stream_id}  frame {event.peak_frame}  {when}  peak {event.peak_score:.2f} > {event.threshold:.2f}"


def outbox_depth(folder: Path) -> dict[str, int]:
    """Sink -> messages waiting in its outbox under the events ``folder`` (sinks without one left out)."""
    return {sink: len(waiting_in(folder / name)) for sink, name in OUTBOXES.items() if (folder / name / "pending").is_dir()}


def events_folder(store: str | Path) -> Path:
    """``runs/cam.zarr`` -> ``runs/cam.events``: where a store's event files go; for a store on
    object storage, in this folder (``s3://bucket/jobs/cam.zarr`` -> ``./cam.events``)."""
    name = store_name(store)
    folder = name.with_name(name.stem + ".events")
    return Path(folder.name) if is_url(store) else Path(folder)


@dataclass(frozen=True)
class EventSettings:
    """A run's event options: the rule (its threshold from the calibration unless given), the
    events folder, the webhook and the MQTT broker (None: no delivery there). Their credentials
    travel with these settings to the writers, in memory: nothing of them is stored (root attrs hold
    ``rule`` only)."""

    rule: EventRule
    folder: str
    webhook: Webhook | None = None
    mqtt: MqttBroker | None = None


@dataclass(frozen=True)
class EventOptions:
    """Event options as given (command line): ``threshold`` None takes the calibration's."""

    threshold: float | None = None
    low_threshold: float | None = None
    end_after: int = 10
    min_frames: int = 3
    merge_gap: int = 25
    webhook: str | None = field(default=None, repr=False)  # may hold credentials
    mqtt: str | None = field(default=None, repr=False)


def event_settings(options: EventOptions, calibrated_threshold: float | None, store: str | Path) -> EventSettings | None:
    """The run's event settings, or None when there is no threshold (no calibration, none given).
    With a calibration the low threshold defaults to one unit below (ten times the false-alarm
    rate), but at least half the threshold (calibrated scores are >= 0). Raises AnomstreamError
    for a webhook or MQTT broker without a threshold or a bad option."""
    threshold = options.threshold if options.threshold is not None else calibrated_threshold
    if threshold is None:
        for option, given in (("--webhook", options.webhook), ("--mqtt", options.mqtt)):
            if given:
                raise AnomstreamError(f"{option}: events need a threshold: calibrate the checkpoint "
                                      "(anomstream calibrate) or pass --event-threshold")
        return None
    low = options.low_threshold
    if low is None and calibrated_threshold is not None:  # calibrated scores: ten times the rate, never <= 0
        low = max(threshold - 1.0, threshold / 2)
    try:
        rule = EventRule(threshold, low, options.end_after, options.min_frames, options.merge_gap)
    except ValueError as error:
        raise AnomstreamError(str(error)) from None
    return EventSettings(rule, str(events_folder(store).absolute()), parse_webhook(options.webhook) if options.webhook else None,
                         parse_mqtt(options.mqtt) if options.mqtt else None)


def message(kind: str, event: Event) -> dict[str, Any]:
    return {"type": kind, **event.to_dict()}


class EventRecorder:
    """Events of every stream of a run. ``run_key`` makes event ids unique to the run's store."""

    def __init__(self, settings: EventSettings, run_key: str, fresh: bool = False, deliver: bool = True) -> None:
        """``fresh``: the store is being replaced (--overwrite): so are the event log and snapshots
        (messages not delivered yet stay in the outboxes). ``deliver``: send the outboxes to the
        webhook and the MQTT broker (False: only put messages in them, for the recorder that delivers
        the folder's outboxes)."""
        self.settings, self.run_key = settings, run_key
        self.folder = Path(settings.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if fresh:
            for path in [self.folder / "events.jsonl", *self.folder.glob("*.jpg")]:
                path.unlink(missing_ok=True)
        # unbuffered: each group of lines is one append, whole, beside other writers' (one run's K writers)
        self.log = (self.folder / "events.jsonl").open("ab", buffering=0)
        self.outboxes: list[tuple[Outbox, Callable[[dict[str, Any]], bool]]] = []  # each with what it takes
        if settings.webhook:
            outbox = Outbox(self.folder / OUTBOXES["webhook"], settings.webhook if deliver else None)
            self.outboxes.append((outbox, webhook.wanted))
        if settings.mqtt:
            sender = MqttSender(settings.mqtt, f"anomstream-{run_key[:12]}-{os.getpid()}") if deliver else None
            self.outboxes.append((Outbox(self.folder / OUTBOXES["mqtt"], sender), mqtt.wanted))
        self.detectors: dict[str, EventDetector] = {}
        self.news: list[dict[str, Any]] = []  # messages since the driver last asked
        self.recent: dict[str, deque[dict[str, Any]]] = {}  # per stream, for the live view
        self.camera_live: dict[str, bool] = {}  # per camera stream: whether it was live when last told
        self.camera_recent: dict[str, deque[dict[str, Any]]] = {}  # camera_up / camera_down, for the view
        self.camera_states: dict[str, str] = {}  # per camera stream: its state when last told
        self.camera_since: dict[str, float] = {}  # per camera stream: when that state began

    def open_stream(self, stream_id: str, threshold: float | None = None, low_threshold: float | None = None) -> None:
        """``threshold``: the stream's own (a cameras file), else the run's; its ``low_threshold``
        defaults as --event-low's does with a calibration (one unit below, at least half)."""
        rule = self.settings.rule
        if threshold is not None:
            low = low_threshold if low_threshold is not None else max(threshold - 1.0, threshold / 2)
            rule = replace(rule, threshold=threshold, low_threshold=low)
        self.detectors[stream_id] = EventDetector(stream_id, rule, self.run_key)
        self.recent.setdefault(stream_id, deque(maxlen=RECENT_EVENTS))

    def feed(self, stream_id: str, values: dict[str, np.ndarray], batch: WindowBatch | None) -> list[dict[str, Any]]:
        """Rows just written (``frame_index``, ``timestamp``, ``score``, ``status``, ``map``) and the
        batch they were scored from (for the peak frame's image; None: no snapshot). Returns the
        finished events as table rows for the store."""
        score = np.where(values["status"] == FrameStatus.SCORED, values["score"], np.nan)

        def peak(row: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None] | None:
            position = batch.context + row if batch is not None else -1
            if position < 0:
                return None
            return batch.frames[position].copy(), np.asarray(values["map"][row]).copy(), batch.source_size

        messages = self.detectors[stream_id].feed(values["frame_index"], values["timestamp"], score, peak)
        return self._publish(stream_id, messages)

    def camera(self, stream_id: str, status: LiveStatus) -> None:
        """A camera's state from its decoder: every change as ``camera_state`` (MQTT's retained state
        topic); ``camera_down`` when it leaves ``live`` or does not come up (stalled, down, refusing
        its credentials, given up before its first frame), ``camera_up`` when it is ``live`` again,
        each to the log, the webhook, the driver and the view, as events are (``connecting`` and the
        end of a stream that had frames are no such message).
        Ids are made of the stream, the kind and the time of the change: told again (a writer taking
        over, --resume), a change is the same message."""
        previous = self.camera_since.get(stream_id)  # the change before: a camera live again after a stall
        if self.camera_states.get(stream_id) != status.state:  # seen from outside keeps its first ``since``
            self.camera_states[stream_id] = status.state
            self.camera_since[stream_id] = status.since
            self._send({"type": "camera_state", "stream_id": stream_id, "state": status.state, "since": status.since,
                        "last_frame": status.last_frame, "reason": status.reason}, (status.since, previous))
        is_live, was_live = status.state == "live", self.camera_live.get(stream_id)
        never_came = status.state == "stopped" and was_live is None and status.reason is not None  # given up connecting
        if status.state == "connecting" or (status.state == "stopped" and not never_came):
            return
        if was_live == is_live:
            return
        self.camera_live[stream_id] = is_live
        if was_live is None and is_live:
            return  # its first frames: nothing went down
        record = {"type": "camera_up" if is_live else "camera_down", "stream_id": stream_id, "state": status.state,
                  "time": status.since, "last_frame": status.last_frame, "reason": status.reason}
        self.log.write((json.dumps(record) + "\n").encode("utf-8"))
        self._send(record, (status.since, previous))
        self.news.append(record)
        self.camera_recent.setdefault(stream_id, deque(maxlen=RECENT_EVENTS)).append(record)

    def _send(self, record: dict[str, Any], time: Any = None, message_id: str | None = None) -> None:
        """``record`` into each outbox that takes it, under ``message_id`` (a camera or scene
        message's: made of the run, the stream, its kind and ``time``, the change's own time and the
        one before)."""
        if message_id is None:
            key = f"{self.run_key}\0{record['stream_id']}\0{record['type']}\0{time!r}"
            message_id = f"{hashlib.sha256(key.encode()).hexdigest()[:20]}-{record['type']}"
        for outbox, wanted in self.outboxes:
            if wanted(record):
                outbox.put(message_id, record)

    def scene(self, stream_id: str, verdict: dict[str, Any]) -> None:
        """The model does not fit the stream's scene (``misfit``), the scene drifted from it
        (``drift``) or fits it again (:mod:`pipeline.calibration.scene`): a ``scene_<state>``
        message to the log, the webhook, MQTT and the driver (which prints it as a warning)."""
        record = {"type": f"scene_{verdict['state']}", "stream_id": stream_id, **verdict}
        self.log.write((json.dumps(record) + "\n").encode("utf-8"))
        self._send(record, float(verdict["first_frame"]))
        self.news.append(record)

    def close_stream(self, stream_id: str) -> list[dict[str, Any]]:
        """The stream ended: its open event is over. Returns the finished events' table rows."""
        detector = self.detectors.get(stream_id)
        if detector is None:
            return []
        rows = self._publish(stream_id, detector.flush())
        del self.detectors[stream_id]
        return rows

    def _publish(self, stream_id: str, messages: list[tuple[str, Event]]) -> list[dict[str, Any]]:
        """Snapshots of ended events, then every message in order: log, outbox, news, the view."""
        detector = self.detectors[stream_id]
        ended, lines = [], []
        for kind, event in messages:
            picture = None
            if kind == "end":
                picture = self._snapshot(event, detector.peak_payload(event))
                ended.append(event.to_dict())
            record = message(kind, event)
            lines.append(json.dumps(record) + "\n")
            if self.outboxes:  # an end message goes out with its picture inline: the receiver needs no file here
                sent = {**record, "snapshot_jpeg": base64.b64encode(picture).decode("ascii")} if picture else record
                self._send(sent, message_id=f"{event.event_id}-{kind}")
            self.news.append(record)
            self.recent[stream_id].append(record)
        if lines:
            self.log.write("".join(lines).encode("utf-8"))
        return ended

    def _snapshot(self, event: Event, kept: tuple[np.ndarray, np.ndarray, tuple[int, int] | None] | None) -> bytes | None:
        """The peak frame with its map as ``<event_id>.jpg`` (written whole, then renamed), in the
        source frame's own shape (SNAPSHOT_SIZE px its longer side), captioned with the stream, the
        peak's frame, time and score, and the threshold; returns the JPEG (None: no peak frame kept)."""
        if kept is None:
            return None
        image, anomaly_map, source_size = kept
        finite = anomaly_map[np.isfinite(anomaly_map)]
        high = float(np.percentile(finite.astype(np.float32), 99.5)) if finite.size else 1.0
        path = self.folder / f"{event.event_id}.jpg"
        temporary = path.with_name(f".{path.name}.tmp")
        picture = overlay_jpeg(image, anomaly_map, high, SNAPSHOT_SIZE,
                               source_size[1] / source_size[0] if source_size else None, snapshot_caption(event))
        temporary.write_bytes(picture)
        temporary.replace(path)
        event.snapshot = path.name
        return picture

    def view(self, stream_id: str) -> dict[str, Any]:
        """For the live view: the threshold, the stream's recent event messages, whether one is
        open, and its camera's recent ``camera_up`` / ``camera_down`` messages."""
        recent = list(self.recent.get(stream_id, ()))
        open_ids = {m["event_id"] for m in recent if m["type"] == "start"} - {m["event_id"] for m in recent if m["type"] == "end"}
        detector = self.detectors.get(stream_id)
        rule = detector.rule if detector is not None else self.settings.rule
        return {"threshold": rule.threshold, "events": recent, "event_open": bool(open_ids),
                "camera_events": list(self.camera_recent.get(stream_id, ()))}

    def take_news(self) -> list[dict[str, Any]]:
        news, self.news = self.news, []
        return news

    def close(self, wait_s: float = 5.0) -> Undelivered:
        """Flush the log; give the webhook up to ``wait_s`` s. Returns how many messages are left in
        the outbox, with a line per delivery failure that still stands (:meth:`Outbox.problems`)."""
        self.log.close()
        left = [outbox.close(wait_s) for outbox, _ in self.outboxes]
        return Undelivered(sum(left), [line for outbox, _ in self.outboxes for line in outbox.problems()])
