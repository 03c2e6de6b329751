"""Event-level figures of a store against frame labels: how many labelled anomalous segments an
event overlaps (recall), and events that overlap no anomalous frame (false events) per minute of
normal footage. Segments are the runs of consecutive anomalous frames of a video."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..store import open_results, read_events


@dataclass
class EventFigures:
    segments: int  # labelled anomalous segments in the evaluated streams
    detected: int  # segments overlapped by at least one event
    events: int
    false_events: int  # events overlapping no anomalous frame
    normal_minutes: float  # normal frames / the stream's frame rate

    @property
    def recall(self) -> float:
        return self.detected / self.segments if self.segments else float("nan")

    @property
    def false_per_minute(self) -> float:
        return self.false_events / self.normal_minutes if self.normal_minutes else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "recall": self.recall, "false_events_per_minute": self.false_per_minute}


def segments(labels: np.ndarray) -> list[tuple[int, int]]:
    """Runs of 1 in a 0/1 frame-label array as inclusive (first, last) frame indices."""
    padded = np.concatenate([[0], np.asarray(labels, np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def event_figures(path: str | Path, labels: dict[str, np.ndarray]) -> EventFigures | None:
    """Figures over the store's streams that have labels; None when the run kept no events table
    (no threshold). Frames beyond a stream's written rows do not count."""
    root = open_results(path)
    if not root.attrs.get("events"):
        return None
    figures = EventFigures(0, 0, 0, 0, 0.0)
    for stream_id in sorted(root.group_keys()):
        if stream_id not in labels:
            continue
        group = root[stream_id]
        y = np.asarray(labels[stream_id][: int(group.attrs.get("written", 0))])
        table = read_events(path, stream_id)
        spans = list(zip(table["start_frame"].tolist(), table["end_frame"].tolist()))
        truth = segments(y)
        figures.segments += len(truth)
        figures.detected += sum(any(s <= last and e >= first for s, e in spans) for first, last in truth)
        figures.events += len(spans)
        figures.false_events += sum(not y[s:e + 1].any() for s, e in spans)
        figures.normal_minutes += float((y == 0).sum()) / float(group.attrs.get("fps") or 25.0) / 60.0
    return figures
