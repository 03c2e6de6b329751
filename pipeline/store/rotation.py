"""One store per hour or day of a live run: a camera runs for days, and a store per period can be
moved, archived or deleted whole while the run goes on.

``live.zarr`` rotated by the hour is written as ``live-20261130T09.zarr``, ``live-20261130T10.zarr``,
... (UTC, by the capture time of each row). Every period's store holds the rows of every stream
captured in it; ``frame_index`` keeps counting across periods, rows start at 0 in each store. When
a period ends its streams are closed there (complete, attr ``continues_in``: the next store's name).
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.store.accounting import StreamAccounting
from pipeline.store.results import ArraySpec, ResultStore, StoredStream

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
                 now: float | None = None) -> None:
        """Opens the store of the period ``now`` (default: the current time) falls in, so that a
        store that cannot be created is refused at once (StoreError); later periods' stores are
        continued if they exist (``resume``), unless ``mode`` is ``overwrite``."""
        self.path, self.run_attrs, self.period_s = Path(path), run_attrs, period_s
        self.period = -np.inf
        self.inputs: tuple[list[str], list[str]] = ([], [])
        self.streams: dict[str, tuple[dict[str, ArraySpec], int, dict[str, Any]]] = {}  # how each stream opens
        self.rows: dict[str, int] = {}  # stream -> the run's next row
        self.offsets: dict[str, int] = {}  # stream -> the run's row that is row 0 of this period's store
        self.closed: dict[str, StreamAccounting] = {}  # accounting of streams closed for good
        self.mode = mode
        self.store = self._store_at(time.time() if now is None else now)
        self.mode = "overwrite" if mode == "overwrite" else "resume"

    def _store_at(self, timestamp: float) -> ResultStore:
        period = float(np.floor(timestamp / self.period_s) * self.period_s)
        if period <= self.period:
            return self.store
        following = period_path(self.path, self.period_s, period)
        if self.period > -np.inf:
            for stream_id in list(self.offsets):
                self.store.close_stream(stream_id)
                self.store.streams[stream_id].attrs["continues_in"] = following.name
        store = ResultStore(following, self.run_attrs, self.mode)
        store.note_inputs(*self.inputs)
        self.store, self.period, self.offsets = store, period, {}
        return store

    def _open(self, stream_id: str, timestamp: float) -> ResultStore:
        """The store of ``timestamp``'s period, with the stream open in it."""
        store = self._store_at(timestamp)
        if stream_id not in self.offsets:
            arrays, chunk, attrs = self.streams[stream_id]
            store.open_stream(stream_id, arrays, chunk, None, attrs)
            self.offsets[stream_id] = self.rows.get(stream_id, 0) - store.written(stream_id)
        return store

    def note_inputs(self, failed: list[str], left_out: list[str]) -> None:
        self.inputs = (failed, left_out)
        self.store.note_inputs(failed, left_out)

    def stored_stream(self, stream_id: str) -> StoredStream | None:
        return None  # a rotated live stream starts afresh in whichever store its rows land

    def open_stream(self, stream_id: str, arrays: dict[str, ArraySpec], chunk: int,
                    frame_count: int | None, attrs: dict[str, Any]) -> None:
        self.streams[stream_id] = (arrays, chunk, attrs)

    def write(self, stream_id: str, start: int, values: dict[str, np.ndarray]) -> None:
        """Rows [start, start + n) of the run, split at period boundaries by capture time."""
        timestamp = values["timestamp"]
        periods = np.floor(timestamp / self.period_s)
        cuts = [0, *(np.flatnonzero(np.diff(periods)) + 1).tolist(), len(timestamp)]
        for begin, end in zip(cuts, cuts[1:]):
            self.rows.setdefault(stream_id, start + begin)
            store = self._open(stream_id, float(timestamp[begin]))
            part = {name: data[begin:end] for name, data in values.items()}
            store.write(stream_id, start + begin - self.offsets[stream_id], part)
            self.rows[stream_id] = start + end

    def add_gaps(self, stream_id: str, gaps: list[dict[str, Any]]) -> None:
        """Noted in the store of the period the last gap ended in."""
        self._open(stream_id, max(gap["end"] for gap in gaps)).add_gaps(stream_id, gaps)

    def close_stream(self, stream_id: str, error: str | None = None, warnings: list[str] | None = None,
                     stopped: bool = False) -> None:
        store = self.store if stream_id in self.offsets else self._open(stream_id, self.period)
        store.close_stream(stream_id, error, warnings, stopped)
        self.closed[stream_id] = store.accounting[stream_id]
        del self.offsets[stream_id]

    @property
    def accounting(self) -> dict[str, StreamAccounting]:
        """Each stream's accounting in this period's store (else where it was closed)."""
        return {**self.closed, **{s: self.store.accounting[s] for s in self.offsets}}
