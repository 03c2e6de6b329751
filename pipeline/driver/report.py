"""What a scoring run reports: per stream frames, errors and warnings; inputs that failed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.sources.resolve import Rejection


@dataclass
class StreamReport:
    source: str
    frames: int = 0
    error: str | None = None
    skipped: bool = False  # already complete in the store (resume)
    warnings: list[str] = field(default_factory=list)  # e.g. still images that could not be decoded


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
