"""Frame scores of one stream -> anomaly events, causally (hysteresis, minimum length, merging).

An event opens at the first scored frame whose score exceeds ``threshold`` and stays open while
scores stay at or above ``low_threshold``; it ends once ``end_after`` frames have passed since its
last such frame (the end frame is that last frame). Events spanning fewer than ``min_frames``
frames are dropped; a score above ``threshold`` within ``merge_gap`` frames after a kept event
ended (``end_frame + end_after``) extends that event instead of opening another. Unscored rows
(warm-up, dropped, gaps) neither open nor extend an event, but frames pass during them.

Hysteresis with a minimum duration and merging follows the usual alarm logic of live video
analytics (e.g. Frigate's and DeepStream's event start / end); the rule's units are frames of the
stream, the times come from the frames' capture timestamps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EventRule:
    """When frame scores make an event. ``low_threshold`` None: the same as ``threshold``."""

    threshold: float
    low_threshold: float | None = None
    end_after: int = 10
    min_frames: int = 3
    merge_gap: int = 25

    def __post_init__(self) -> None:
        for name in ("threshold", "low_threshold"):
            value = getattr(self, name)
            if value is not None and not np.isfinite(value):
                raise ValueError(f"event {name} must be a finite number, got {value}")
        if self.low_threshold is not None and self.low_threshold > self.threshold:
            raise ValueError(f"event low threshold {self.low_threshold} is above the threshold {self.threshold}")
        for name in ("end_after", "min_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"event {name} must be >= 1 frame, got {getattr(self, name)}")
        if self.merge_gap < 0:
            raise ValueError(f"event merge_gap must be >= 0 frames, got {self.merge_gap}")

    @property
    def low(self) -> float:
        return self.threshold if self.low_threshold is None else self.low_threshold


@dataclass
class Event:
    """One anomaly event of a stream: frames [start_frame, end_frame], times in seconds since the
    epoch (capture times), the highest score and where it was. ``snapshot``: the JPEG file of the
    peak frame with its map, relative to the events folder (None until written)."""

    stream_id: str
    event_id: str
    start_frame: int
    end_frame: int
    start_time: float
    end_time: float
    peak_frame: int
    peak_time: float
    peak_score: float
    threshold: float
    snapshot: str | None = None

    @property
    def frames(self) -> int:
        return self.end_frame - self.start_frame + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Open:
    event: Event
    last_high: int
    peak_row: Any = field(default=None, repr=False)  # what the caller keeps of the peak frame


def event_id(run_key: str, stream_id: str, start_frame: int) -> str:
    """Stable id of the event starting at ``start_frame`` of a stream in a run (the same when the
    event is detected again, e.g. after a restart), 20 hex characters."""
    return hashlib.sha256(f"{run_key}\0{stream_id}\0{start_frame}".encode()).hexdigest()[:20]


class EventDetector:
    """Feed rows of one stream in frame order; get event messages as they are known.

    :meth:`feed` returns ``("start", event)`` when an event reaches ``min_frames`` (an alert can go
    out) and ``("end", event)`` when it is over for good (past the merge window), in the order the
    rows make them. ``payload(i)`` passed with the rows (e.g. the frame and its map) is called for a
    row that becomes an event's peak; :meth:`peak_payload` gives it back once the event has ended.
    """

    def __init__(self, stream_id: str, rule: EventRule, run_key: str = "") -> None:
        self.stream_id, self.rule, self.run_key = stream_id, rule, run_key
        self.current: _Open | None = None  # open, or ended and waiting out the merge window
        self.closed = False  # whether ``current`` has ended (waiting for a merge)
        self.announced = False  # whether ``current`` was returned as started
        self.payloads: dict[str, Any] = {}

    def feed(self, frame_index: np.ndarray, timestamp: np.ndarray, score: np.ndarray,
             payload: Callable[[int], Any] | None = None) -> list[tuple[str, Event]]:
        """``frame_index`` int (B,), ``timestamp`` float (B,) seconds, ``score`` float (B,) with NaN
        for unscored rows, in frame order (+inf counts as above any threshold)."""
        messages: list[tuple[str, Event]] = []
        for i in range(len(frame_index)):
            frame, value, time = int(frame_index[i]), float(score[i]), float(timestamp[i])
            self._expire(frame, messages)
            if np.isnan(value):
                continue
            current = self.current
            if value > self.rule.threshold and (current is None or (self.closed and not self.announced)):
                self._finish(messages)  # a closed event too short to keep is not merged into a new one
                current = self._open(frame, time)
            elif current is not None and value >= self.rule.low and (not self.closed or value > self.rule.threshold):
                self.closed, current.last_high = False, frame  # goes on, or merges into the ended event
                current.event.end_frame, current.event.end_time = frame, time
            else:
                continue
            if value > current.event.peak_score:
                current.event.peak_frame, current.event.peak_time, current.event.peak_score = frame, time, value
                current.peak_row = payload(i) if payload is not None else None
            if not self.announced and current.event.frames >= self.rule.min_frames:
                self.announced = True
                messages.append(("start", current.event))
        return messages

    def _open(self, frame: int, time: float) -> _Open:
        event = Event(self.stream_id, event_id(self.run_key, self.stream_id, frame), frame, frame, time, time,
                      frame, time, -np.inf, self.rule.threshold)
        self.current, self.closed, self.announced = _Open(event, frame), False, False
        return self.current

    def _expire(self, frame: int, messages: list[tuple[str, Event]]) -> None:
        current = self.current
        if current is None:
            return
        if not self.closed and frame - current.last_high >= self.rule.end_after:
            self.closed = True
        if self.closed and frame - current.last_high > self.rule.end_after + self.rule.merge_gap:
            self._finish(messages)

    def _finish(self, messages: list[tuple[str, Event]]) -> None:
        current, self.current = self.current, None
        if current is not None and self.announced:
            self.payloads[current.event.event_id] = current.peak_row
            messages.append(("end", current.event))
        self.announced = False

    def flush(self) -> list[tuple[str, Event]]:
        """The stream ended: its open event ends at its last frame at or above the low threshold."""
        messages: list[tuple[str, Event]] = []
        self._finish(messages)
        return messages

    def peak_payload(self, event: Event) -> Any:
        """What ``payload`` returned for the event's peak row (once; None if nothing was kept)."""
        return self.payloads.pop(event.event_id, None)
