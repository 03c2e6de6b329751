"""What a scoring run reports: per stream frames, errors and warnings; inputs that failed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.sources.resolve import Rejection


@dataclass
class StreamReport:
    source: str
    frames: int = 0
    error: str | None = None
    skipped: bool = False  # already complete in the store (resume)
    warnings: list[str] = field(default_factory=list)  # e.g. still images that could not be decoded
    stopped: bool = False  # a live stream ended by --duration or a signal (complete: every frame read is written)
    accounting: dict[str, Any] = field(default_factory=dict)  # frame_counts, latency_ms, gaps (the stream's attrs)


@dataclass
class RunReport:
    store: Path
    streams: dict[str, StreamReport] = field(default_factory=dict)
    failed: list[Rejection] = field(default_factory=list)  # inputs that gave no stream: errors
    left_out: list[Rejection] = field(default_factory=list)  # files in folders that are not videos or images
    seconds: float = 0.0  # from the replicas being ready to the last frame written
    replicas: int = 0
    device: str = "cpu"
    replica_busy: list[float] = field(default_factory=list)  # share of ``seconds`` each replica spent scoring

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.streams.values())

    @property
    def errors(self) -> list[str]:
        return [r.reason for r in self.failed] + [s.error for s in self.streams.values() if s.error]


def live_table(accounting: dict[str, dict[str, Any]]) -> str:
    """A compact per-stream table of live figures: frames captured / scored / dropped / not scored
    for a gap or a frozen feed, latency percentiles (ms), gaps."""
    lines = [f"{'stream':24s} {'captured':>8s} {'scored':>7s} {'dropped':>7s} {'gap':>5s} {'p50':>7s} {'p95':>7s} "
             f"{'p99':>7s} {'gaps':>4s}"]
    for stream_id, attrs in accounting.items():
        counts, latency = attrs["frame_counts"], attrs["latency_ms"] or {}
        unscored = counts["source_gap"] + counts["frozen"] + counts["decode_error"]
        shown = [f"{latency[key]:7.0f}" if key in latency else f"{'-':>7s}" for key in ("p50", "p95", "p99")]
        lines.append(f"{stream_id[:24]:24s} {sum(counts.values()):8d} {counts['scored']:7d} {counts['dropped_behind']:7d} "
                     f"{unscored:5d} {' '.join(shown)} {len(attrs['gaps']):4d}")
    return "\n".join(lines)
