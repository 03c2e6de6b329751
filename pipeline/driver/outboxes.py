"""A live run's word, while it goes on, that a receiver of its events is away: the outboxes keep
every message (:mod:`pipeline.events.outbox`) and the run used to say so only when it ended."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..events.recorder import OUTBOXES, outbox_depth

WAITING_WARN_S = 30.0  # messages waiting this long in an outbox are told once, until it empties
CHECK_EVERY_S = 5.0  # how often the outboxes on disk are counted


class OutboxWatch:
    """Counts the messages waiting in the outboxes of the events ``folder`` every CHECK_EVERY_S and
    prints one warning per sink whose outbox has not been empty for WAITING_WARN_S; once it has
    emptied, a later wait is told again. ``clock``: seconds, monotonic (tests give their own)."""

    def __init__(self, folder: Path, clock=time.monotonic) -> None:
        self.folder, self.clock = folder, clock
        self.waiting_since: dict[str, float] = {}  # sink -> when its outbox was first seen not empty
        self.told: set[str] = set()
        self.due = clock()

    def check(self) -> list[str]:
        """The warnings printed now (each also on stderr)."""
        now = self.clock()
        if now < self.due:
            return []
        self.due = now + CHECK_EVERY_S
        lines = []
        for sink, waiting in outbox_depth(self.folder).items():
            if not waiting:
                self.waiting_since.pop(sink, None)
                self.told.discard(sink)
                continue
            since = self.waiting_since.setdefault(sink, now)
            if now - since >= WAITING_WARN_S and sink not in self.told:
                self.told.add(sink)
                lines.append(f"warning: {sink}: {waiting} message(s) waiting in {self.folder / OUTBOXES[sink]} for "
                             f"{now - since:.0f} s: the receiver is away or refuses them (kept, sent when it answers)")
        for line in lines:
            print(line, file=sys.stderr, flush=True)
        return lines
