"""What a scoring run reports: per stream frames, errors and warnings; inputs that failed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.choice import BackendChoice
from ..sources.resolve import Rejection
from .faults import FaultLog


@dataclass
class StreamReport:
    source: str
    frames: int = 0  # rows written by this run
    stored: int = 0  # rows the store already held when the run began (resume, or a refused input)
    error: str | None = None
    skipped: bool = False  # already complete in the store (resume)
    warnings: list[str] = field(default_factory=list)  # e.g. still images that could not be decoded
    stopped: bool = False  # a live stream ended by --duration or a signal (complete: every frame read is written)
    accounting: dict[str, Any] = field(default_factory=dict)  # frame_counts, latency_ms, gaps (the stream's attrs)


@dataclass
class RunReport:
    store: str | Path  # a path or an object-store URL
    streams: dict[str, StreamReport] = field(default_factory=dict)
    failed: list[Rejection] = field(default_factory=list)  # inputs that gave no stream: errors
    left_out: list[Rejection] = field(default_factory=list)  # files in folders that are not videos or images
    seconds: float = 0.0  # from the replicas being ready to the last frame written
    replicas: int = 0
    device: str = "cpu"
    replica_busy: list[float] = field(default_factory=list)  # share of ``seconds`` each replica spent scoring
    events: int = 0  # events that ended in this run (all streams)
    open_events: dict[str, set[str]] = field(default_factory=dict)  # stream id -> ids of its events open now
    undelivered: int = 0  # webhook messages left in the outbox at the end (an outbox.Undelivered: .problems say why)
    faults: FaultLog = field(default_factory=FaultLog)  # what the run survived (lost replicas, decoders, batches)
    nodes: dict[str, int] = field(default_factory=dict)  # Ray node id -> replicas placed there
    backend: BackendChoice = field(default_factory=BackendChoice)  # what the replicas scored with
    started: bool = False  # a run started (False: no input gave a stream, or a resume had nothing to score)

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.streams.values())

    @property
    def errors(self) -> list[str]:
        return [r.reason for r in self.failed] + [s.error for s in self.streams.values() if s.error]


def event_line(message: dict[str, Any]) -> str:
    """One line per event message, e.g. ``event start cam1 #3f2a... frame 120 (12:00:04) peak 4.31``;
    a camera's ``camera down cam1 (12:00:04) stalled: no frame for 10 s`` / ``camera up cam1 (12:00:09)``."""
    if message["type"] in ("camera_down", "camera_up"):
        when = time.strftime("%H:%M:%S", time.localtime(message["time"]))
        why = f" {message['state'].replace('_', ' ')}: {message['reason']}" if message["type"] == "camera_down" else ""
        return f"camera {message['type'][7:]:5s} {message['stream_id']} ({when}){why}"
    when = time.strftime("%H:%M:%S", time.localtime(message["start_time" if message["type"] == "start" else "end_time"]))
    span = (f"frame {message['start_frame']}" if message["type"] == "start"
            else f"frames {message['start_frame']}-{message['end_frame']}")
    return (f"event {message['type']:5s} {message['stream_id']} {message['event_id'][:8]} {span} ({when}) "
            f"peak {message['peak_score']:.2f} at frame {message['peak_frame']}")


def live_table(accounting: dict[str, dict[str, Any]]) -> str:
    """A compact per-stream table of live figures: a camera's state and the age of its newest frame
    (seconds), frames captured / scored / dropped / not scored for a gap or a frozen feed, latency
    percentiles (ms), gaps. Stream names are shown whole (the column as wide as the longest)."""
    width = max([24, *map(len, accounting)])
    lines = [f"{'stream':{width}s} {'state':>11s} {'last':>6s} {'captured':>8s} {'scored':>7s} {'dropped':>7s} {'gap':>5s} "
             f"{'p50':>7s} {'p95':>7s} {'p99':>7s} {'gaps':>4s}"]
    for stream_id, attrs in accounting.items():
        counts, latency = attrs["frame_counts"], attrs["latency_ms"] or {}
        camera = attrs.get("camera") or {}
        age = camera.get("last_frame_age_s")
        state, last = camera.get("state", "-"), "-" if age is None else f"{age:.1f}s"
        unscored = counts["source_gap"] + counts["frozen"] + counts["decode_error"]
        shown = [f"{latency[key]:7.0f}" if key in latency else f"{'-':>7s}" for key in ("p50", "p95", "p99")]
        lines.append(f"{stream_id:{width}s} {state:>11s} {last:>6s} {sum(counts.values()):8d} {counts['scored']:7d} "
                     f"{counts['dropped_behind']:7d} {unscored:5d} {' '.join(shown)} {len(attrs['gaps']):4d}")
    return "\n".join(lines)
