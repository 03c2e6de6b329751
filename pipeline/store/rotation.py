"""One store per hour or day of a live run: a camera runs for days, and a store per period can be
moved, archived or deleted whole while the run goes on.

``live.zarr`` rotated by the hour is written as ``live-20261130T09.zarr``, ``live-20261130T10.zarr``,
... (UTC, by the capture time of each row; a name already taken gets ``-1``, ``-2``, ...: a
rotation never appends to another run's store). Each stream's rows go to the store of the period
they were captured in, so a stream that lags behind another still files its rows right;
``frame_index`` keeps counting across periods, rows start at 0 in each store. When a stream's
rows pass into the next period its group in the old store is closed (complete, attr
``continues_in``: the next store's name). Accounting (counts, latency, gaps) is per store.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .accounting import StreamAccounting
from .results import FLUSH_S, ArraySpec, ResultStore, StoredStream

if TYPE_CHECKING:
    from ..sources.base import LiveStatus

ROTATIONS = {"hour": 3600.0, "day": 86400.0}


def period_path(path: Path, period_s: float, start: float) -> Path:
    """The store of the period that starts at ``start`` (seconds since the epoch, UTC)."""
    stamp = _dt.datetime.fromtimestamp(start, _dt.timezone.utc)
    pattern = "%Y%m%d" if period_s >= 86400 else "%Y%m%dT%H" if period_s >= 3600 else "%Y%m%dT%H%M%S"
    return path.with_name(f"{path.stem}-{stamp.strftime(pattern)}{path.suffix}")


class RotatingStore:
    """The writer's store when a live run rotates: the interface of :class:`ResultStore`, each
    call sent to the store of the period its rows were captured in. ``period_s``: 3600 (hour),
    86400 (day), or any length (tests)."""

    def __init__(self, path: str | Path, run_attrs: dict[str, Any], mode: str, period_s: float,
                 now: float | None = None, flush_s: float = FLUSH_S) -> None:
        """Opens the store of the period ``now`` (default: the current time) falls in, so that a
        store that cannot be created is refused at once (StoreError). ``flush_s``: each period's
        :class:`ResultStore`'s."""
        self.path, self.run_attrs, self.mode, self.period_s = Path(path), run_attrs, mode, period_s
        self.flush_s = flush_s
        self.attrs: dict[str, Any] = {}  # run-level attrs every period's store gets
        self.stores: dict[float, ResultStore] = {}  # period start -> its store, while a stream writes there
        self.streams: dict[str, tuple[dict[str, ArraySpec], int, dict[str, Any]]] = {}  # how each stream opens
        self.rows: dict[str, int] = {}  # stream -> the run's next row
        self.where: dict[str, tuple[float, int]] = {}  # open stream -> (period, the run's row that is its row 0)
        self.closed: dict[str, StreamAccounting] = {}  # accounting of streams closed for good
        self.first = self._period(time.time() if now is None else now)
        self._store(self.first)

    def _period(self, timestamp: float) -> float:
        return float(np.floor(timestamp / self.period_s) * self.period_s)

    def _store(self, period: float) -> ResultStore:
        if period not in self.stores:
            base = path = period_path(self.path, self.period_s, period)
            taken = 0
            while self.mode == "create" and path.exists():
                taken += 1
                path = base.with_name(f"{base.stem}-{taken}{base.suffix}")
            self.stores[period] = store = ResultStore(path, self.run_attrs, self.mode, self.flush_s)
            store.note_attrs(self.attrs)
        return self.stores[period]

    def _open(self, stream_id: str, period: float) -> ResultStore:
        """The store of ``period`` with the stream open in it (closed in the store it leaves)."""
        if stream_id in self.where and self.where[stream_id][0] >= period:
            return self.stores[self.where[stream_id][0]]
        store = self._store(period)
        if stream_id in self.where:
            left = self.stores[self.where[stream_id][0]]
            left.close_stream(stream_id)
            left.streams[stream_id].attrs["continues_in"] = store.path.name
            self._forget(stream_id)
        arrays, chunk, attrs = self.streams[stream_id]
        store.open_stream(stream_id, arrays, chunk, None, attrs)
        self.where[stream_id] = (period, self.rows.get(stream_id, 0))
        return store

    def _forget(self, stream_id: str) -> None:
        period, _ = self.where.pop(stream_id)
        if period != self.first and all(p != period for p, _ in self.where.values()):
            del self.stores[period]  # every stream has moved on: nothing more goes there

    def note_inputs(self, failed: list[str], left_out: list[str]) -> None:
        self.note_attrs({"failed_inputs": failed, "left_out": left_out})

    def note_attrs(self, attrs: dict[str, Any]) -> None:
        self.attrs.update(attrs)
        for store in self.stores.values():
            store.note_attrs(attrs)

    def stored_stream(self, stream_id: str) -> StoredStream | None:
        return None  # a rotated live stream starts afresh in whichever store its rows land

    def open_stream(self, stream_id: str, arrays: dict[str, ArraySpec], chunk: int,
                    frame_count: int | None, attrs: dict[str, Any]) -> None:
        self.streams[stream_id] = (arrays, chunk, attrs)
        self._open(stream_id, self.first)

    def write(self, stream_id: str, row: int, values: dict[str, np.ndarray]) -> None:
        """Rows [row, row + n) of the run, split at period boundaries by capture time."""
        timestamp = values["timestamp"]
        periods = np.floor(timestamp / self.period_s)
        cuts = [0, *(np.flatnonzero(np.diff(periods)) + 1).tolist(), len(timestamp)]
        for begin, end in zip(cuts, cuts[1:]):
            self.rows.setdefault(stream_id, row + begin)
            store = self._open(stream_id, self._period(float(timestamp[begin])))
            part = {name: data[begin:end] for name, data in values.items()}
            store.write(stream_id, row + begin - self.where[stream_id][1], part)
            self.rows[stream_id] = row + end

    def flush_due(self) -> None:
        for store in self.stores.values():
            store.flush_due()

    def flush_all(self) -> None:
        for store in self.stores.values():
            store.flush_all()

    def add_gaps(self, stream_id: str, gaps: list[dict[str, Any]]) -> None:
        """Noted where the stream's rows are now (a gap belongs with the rows before and after it)."""
        self.stores[self.where[stream_id][0]].add_gaps(stream_id, gaps)

    def set_camera(self, stream_id: str, status: LiveStatus) -> None:
        self.stores[self.where[stream_id][0]].set_camera(stream_id, status)

    def add_events(self, stream_id: str, events: list[dict[str, Any]]) -> None:
        """Kept in the store the stream writes to now (an event belongs to the period it ends in)."""
        self.stores[self.where[stream_id][0]].add_events(stream_id, events)

    def close_stream(self, stream_id: str, error: str | None = None, warnings: list[str] | None = None,
                     stopped: bool = False) -> None:
        store = self.stores[self.where[stream_id][0]]
        store.close_stream(stream_id, error, warnings, stopped)
        self.closed[stream_id] = store.accounting[stream_id]
        self._forget(stream_id)

    @property
    def accounting(self) -> dict[str, StreamAccounting]:
        """Each stream's accounting in the store it writes to now (else where it was closed)."""
        return {**self.closed, **{s: self.stores[p].accounting[s] for s, (p, _) in self.where.items()}}
