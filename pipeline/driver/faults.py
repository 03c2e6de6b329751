"""What a run survived: one line per fault, printed when it happens, counted in the run report and
kept in the store's attrs (``faults``)."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_LINES = 100  # kept in the attrs; the counts go on


@dataclass
class FaultLog:
    """Faults of one run: ``counts`` per kind (``replica_restarted``, ``replica_replaced``,
    ``batch_resent``, ``stream_redecoded``, ``writer_replaced``: :mod:`pipeline.driver.recovery`)
    and their one-line messages."""

    echo: bool = True
    counts: Counter = field(default_factory=Counter)
    lines: list[str] = field(default_factory=list)

    def note(self, kind: str, line: str | None = None, count: int = 1) -> None:
        self.counts[kind] += count
        if line is None:
            return
        if len(self.lines) < MAX_LINES:
            self.lines.append(line)
        if self.echo:
            print(f"warning: {line}", file=sys.stderr, flush=True)

    def attrs(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "messages": list(self.lines)}
