"""The driver's side of writing: rows to their stream's writer in frame order, writes in flight bounded.

:class:`RowSender` sends what a stream has ready (its :class:`StreamState`'s rows next in frame order)
to the stream's writer as object references, opens and closes streams in the store, and keeps the
writes in flight under a bound (the loop waits on the oldest beyond it). A failed write surfaces
from ``ray.get`` here as the RayError the loop's writer takeover handles.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import ray

from ..sources.base import Gap, LiveStatus
from ..store import StoredStream
from .report import RunReport
from .reporter import Reporter
from .schedule import Decoded, StreamState, WriteItem, WriteKind
from .writers import WriterSet

VIEW_FRAME_S = 0.4  # live view: a stream's shown frame is renewed at most this often


class RowSender:
    """``writers``: the run's writers; ``max_in_flight``: writes sent but not known done, at most;
    ``arrays``, ``chunk``: the store's result arrays and the rows per map chunk (the batch size);
    ``flush_s``: rows that waited this long go to disk although their stream sent nothing since;
    ``view``, ``events``: the writers keep frames for the live view / snapshots for events."""

    def __init__(self, writers: WriterSet, report: RunReport, reporter: Reporter, max_in_flight: int,
                 store_layout: tuple[dict[str, Any], int], flush_s: float, view: bool = False,
                 events: bool = False) -> None:
        self.writers, self.report, self.reporter, self.max_in_flight = writers, report, reporter, max_in_flight
        (self.arrays, self.chunk), self.flush_s = store_layout, flush_s
        self.view, self.events = view, events
        self.refs: deque = deque()
        self.view_due: dict[str, float] = {}  # stream -> when its next batch goes to the writer for the view
        self.rows_due = time.monotonic() + flush_s

    def ask_stored(self, stream_id: str) -> Any:
        """The reference to what the store holds of a stream (asked of its writer; writer 0 for one
        not opened yet), for :meth:`stored`."""
        return self.writers.of(stream_id).stored_stream.remote(stream_id)

    def stored(self, stream_id: str, asked: Any = None) -> StoredStream | None:
        """What the store holds of a stream: the answer to ``asked`` (:meth:`ask_stored`), or asked now."""
        return ray.get(asked if asked is not None else self.ask_stored(stream_id))

    def open(self, stream_id: str, frame_count: int | None, attrs: dict[str, Any]) -> None:
        """The stream opened in the store, not waited for: the writer runs the driver's calls in the
        order sent, so the stream's writes follow its opening, and a failure to open surfaces with
        the writes in flight, before any of that stream's."""
        self.refs.append(self.writers.of(stream_id).open_stream.remote(stream_id, self.arrays, self.chunk, frame_count,
                                                                       attrs))

    def add_gaps(self, stream_id: str, gaps: tuple[Gap, ...]) -> None:
        """Gaps that ended (a decoder's answer; none: nothing sent)."""
        if gaps:
            self.refs.append(self.writers.of(stream_id).add_gaps.remote(stream_id, [gap.to_dict() for gap in gaps]))

    def set_camera(self, stream_id: str, status: LiveStatus) -> None:
        self.refs.append(self.writers.of(stream_id).set_camera.remote(stream_id, status))

    def shown(self, item: Decoded) -> Any:
        """The batch passed along to the writer with its rows: always for event snapshots, every
        VIEW_FRAME_S s per stream for the live view, else None (the writer takes no picture)."""
        if self.events:
            return item.ref
        if self.view and time.monotonic() >= self.view_due.get(item.stream_id, 0.0):
            self.view_due[item.stream_id] = time.monotonic() + VIEW_FRAME_S
            return item.ref
        return None

    def send_ready(self, stream_id: str, stream: StreamState) -> None:
        """The stream's rows next in frame order go to its writer; counted in the report."""
        for row, item in stream.take_writable():
            self.refs.append(self._write(stream_id, row, item))
            self.report.streams[stream_id].frames += item.size
            self.reporter.advance(item.size)
        while len(self.refs) > self.max_in_flight:
            ray.get(self.refs.popleft())

    def _write(self, stream_id: str, row: int, item: WriteItem) -> Any:
        writer = self.writers.of(stream_id)
        if item.kind is WriteKind.SCORED:
            return writer.write.remote(stream_id, row, item.result, item.shown)
        return writer.write_unscored.remote(stream_id, row, item.batch, item.kind is WriteKind.DROPPED)

    def close(self, stream_id: str, error: str | None, warnings: list[str], stopped: bool) -> None:
        """Every write sent so far done, then the stream closed in the store and its writer freed."""
        while self.refs:
            ray.get(self.refs.popleft())
        ray.get(self.writers.of(stream_id).close_stream.remote(stream_id, error, warnings, stopped))
        self.writers.release(stream_id)

    def flush_due(self) -> None:
        """A live stream's rows that waited ``flush_s`` onto disk although it sent nothing since (a
        camera between frames); a recording's wait for FLUSH_ROWS or its end (ResultStore.flush_due)."""
        if self.flush_s and time.monotonic() >= self.rows_due:
            self.rows_due = time.monotonic() + self.flush_s
            self.refs.extend(self.writers.flush_due())

    def forget_in_flight(self) -> None:
        """The writers were replaced: the writes sent to the lost ones are sent again from ``written``."""
        self.refs.clear()
