"""What a run shows while it goes: progress, the live table, event lines, the replicas' busy share.

The caller chooses the reporter (:func:`reporter_for`): :class:`ConsoleReporter` on a terminal
run, the silent :class:`Reporter` for ``--quiet`` and library calls. :class:`EventRelay` takes the
writers' event messages, counts them in the run report and hands them to the reporter.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

from ..calibration.scene import scene_line
from ..events.recorder import events_folder
from .busy import NodeBusy
from .outboxes import OutboxWatch
from .report import RunReport, event_line, live_table
from .schedule import ReplicaSlot
from .writers import WriterSet

TABLE_EVERY_S = 5.0
EVENTS_EVERY_S = 1.0  # a live run prints event starts / ends at most this late


class Reporter:
    """Shows nothing: every method is a no-op. Subclasses show what they choose."""

    def start(self, total: int | None, live: bool) -> None:
        """The run starts: ``total`` frames to score (None: unknown, or live)."""

    def not_this_run(self, frames: int) -> None:
        """Frames the store already holds leave the total (a resumed stream, a complete one)."""

    def advance(self, frames: int) -> None:
        """``frames`` rows went to the writer (negative: rows sent to a lost writer, sent again)."""

    def table_due(self) -> bool:
        """Whether the live table is to be shown now (the loop then asks the writers for it)."""
        return False

    def table(self, accounting: dict[str, dict[str, Any]]) -> None:
        """Per stream accounting attrs (:func:`pipeline.driver.report.live_table`)."""

    def event(self, message: dict[str, Any]) -> None:
        """An event's start or end, as the writer's message says."""

    def watch_replicas(self, replicas: list[ReplicaSlot], faults: int) -> bool:
        """Called at every turn of the loop: the replicas' slots and the faults so far (a reporter
        keeping each node's busy share asks the replicas now and then, without waiting). True: the
        shares changed."""
        return False

    def replica_replaced(self, index: int) -> None:
        """Replica ``index`` is a new actor: its busy count starts again."""

    def busy_shares(self) -> dict[str, float]:
        """Node id -> the share of time its replicas spent in the model lately (empty: not kept, or not yet)."""
        return {}

    def close(self) -> None:
        """The run ended."""


class BusyReporter(Reporter):
    """Shows nothing; keeps each node's busy share (for /metrics, and what subclasses show)."""

    def __init__(self) -> None:
        self.node_busy = NodeBusy()

    def watch_replicas(self, replicas: list[ReplicaSlot], faults: int) -> bool:
        return self.node_busy.poll([slot.actor for slot in replicas], [slot.node for slot in replicas])

    def replica_replaced(self, index: int) -> None:
        self.node_busy.forget(index)

    def busy_shares(self) -> dict[str, float]:
        return dict(self.node_busy.shares)


class ConsoleReporter(BusyReporter):
    """A progress bar for recordings (shown from its first update after 0.5 s: by then the frames a
    resume skips have left its total); for live runs the table every TABLE_EVERY_S s, event lines
    and busy lines on stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.live = False
        self.bar: tqdm | None = None
        self.table_at = time.monotonic() + TABLE_EVERY_S

    def start(self, total: int | None, live: bool) -> None:
        self.live, self.table_at = live, time.monotonic() + TABLE_EVERY_S
        self.bar = tqdm(total=total, desc="scoring", unit="frame", disable=live, delay=0.5)

    def not_this_run(self, frames: int) -> None:
        if self.bar is not None and self.bar.total:
            self.bar.total = max(0, self.bar.total - frames)

    def advance(self, frames: int) -> None:
        if self.bar is not None:
            self.bar.update(frames)

    def table_due(self) -> bool:
        if not self.live or time.monotonic() < self.table_at:
            return False
        self.table_at = time.monotonic() + TABLE_EVERY_S
        return True

    def table(self, accounting: dict[str, dict[str, Any]]) -> None:
        print(live_table(accounting), file=sys.stderr, flush=True)

    def event(self, message: dict[str, Any]) -> None:
        if self.live:
            print(event_line(message), file=sys.stderr, flush=True)

    def watch_replicas(self, replicas: list[ReplicaSlot], faults: int) -> bool:
        changed = super().watch_replicas(replicas, faults)
        if changed:
            self._busy(f"busy {self.node_busy.line()}" + (f"; faults {faults}" if faults else ""))
        return changed

    def _busy(self, line: str) -> None:
        if self.live:
            print(f"replicas {line}", file=sys.stderr, flush=True)
        elif self.bar is not None:
            self.bar.set_postfix_str(line, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def reporter_for(progress: bool) -> Reporter:
    """The console reporter, or the silent one (which keeps the busy shares /metrics serves)."""
    return ConsoleReporter() if progress else BusyReporter()


class EventRelay:
    """The writers' event messages: each end counted in ``report.events``, the events open kept in
    ``report.open_events``, each message shown by
    ``reporter``, as they come in a live run (every EVENTS_EVERY_S s) and at the end otherwise.
    ``enabled``: the run detects events. Messages taken from writers about to be replaced are held
    until the end (:meth:`hold`)."""

    def __init__(self, writers: WriterSet, report: RunReport, reporter: Reporter, live: bool, enabled: bool) -> None:
        self.writers, self.report, self.reporter = writers, report, reporter
        self.live, self.enabled = live, enabled
        self.held: list[dict[str, Any]] = []
        self.due = time.monotonic() + EVENTS_EVERY_S
        self.outboxes = OutboxWatch(events_folder(report.store)) if live and enabled else None

    def hold(self) -> None:
        """Before the writers are replaced: what the ones that still answer detected so far (a
        lost writer's are gone). Live runs hand them out as they come instead."""
        if self.enabled and not self.live:
            self.held += self.writers.take_events(lost_ok=True)

    def relay(self, final: bool = False) -> None:
        """The news since the last call, when due (``final``: at the end of the run); a receiver
        away for a while is told as the run goes on (:class:`~pipeline.driver.outboxes.OutboxWatch`)."""
        if self.outboxes is not None and not final:
            self.outboxes.check()
        if not self.enabled or not (final or (self.live and time.monotonic() >= self.due)):
            return
        self.due = time.monotonic() + EVENTS_EVERY_S
        news, self.held = [*self.held, *self.writers.take_events()], []
        for message in news:
            if message["type"].startswith("scene_"):  # a warning, whatever the reporter: quiet runs and score too
                print(f"warning: {scene_line(message['stream_id'], message)}", file=sys.stderr, flush=True)
                continue
            self.report.events += message["type"] == "end"
            if message["type"] in ("start", "end"):
                open_now = self.report.open_events.setdefault(message["stream_id"], set())
                (open_now.add if message["type"] == "start" else open_now.discard)(message["event_id"])
            self.reporter.event(message)
