"""zarr v3 result store: one group per stream with per-frame arrays, written in frame order in
groups of rows (a group not aligned with the chunks rewrites the chunk it ends in).

The store knows arrays, not models: a stream is opened with the per-frame arrays it will hold
(``score``, ``map``, ``frame_index``, ``timestamp``, ``valid``, ``status`` and any extra score
terms), and batches arrive in frame order. Arrays are preallocated when the frame count is known and grown
by whole chunks otherwise (live streams). ``written`` in each group's attrs says how many frames
are safely on disk, which is what ``--resume`` continues from.

Rows are kept in memory and written every ``FLUSH_ROWS`` rows per stream, a live stream's also every
``flush_s`` seconds (default ``FLUSH_S``), and when the stream closes: each zarr write costs about a
millisecond of CPU whatever its size, so writing ten arrays per batch took a tenth of a 2-core machine
at 50 frames/s. A process lost between writes loses at most that much of the stream's rows (a
recording's are scored again by the takeover or ``--resume``; a live stream's are gone).
Per-frame scalars are chunked by ``ROW_CHUNK`` rows (one object per 1,024 frames, not per
batch: fewer files to list and read, and fewer requests on object storage); maps by the batch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import zarr

from ..errors import StoreError
from .accounting import StreamAccounting
from .integrity import DamagedStoreError, check_stream, member_keys
from .location import holds_objects, is_url, zarr_store

if TYPE_CHECKING:
    from ..sources.base import LiveStatus

STORE_FORMAT = "anomstream-store/1"
ATTRS_REFRESH_S = 2.0  # a running live stream's accounting attrs are at most this old
CAMERA_REWRITE_S = 5.0  # a camera attr whose state did not change is written again at most this often
FLUSH_S = 1.0  # a live stream's rows that arrived are on disk (and in ``written``) at most this late...
FLUSH_ROWS = 256  # ...or once this many wait (a recording's: only then, or at its end)
ROW_CHUNK = 1024  # rows per chunk of the per-frame scalar arrays (rounded up to the batch chunk)
RESUMED_ATTRS = ("writer", "scene_check")  # stream attrs a resumed stream takes from the run that goes on with it


@dataclass
class ArraySpec:
    dtype: str
    frame_shape: tuple[int, ...] = ()
    dimension_names: tuple[str, ...] = ()
    fill_value: Any = 0


def result_arrays(map_shape: tuple[int, int], term_names: list[str]) -> dict[str, ArraySpec]:
    """The per-frame arrays of a scoring run: ``valid`` is ``status == SCORED``."""
    specs = {
        "score": ArraySpec("float32", fill_value=np.nan),  # calibrated when the run has a calibration
        "score_raw": ArraySpec("float32", fill_value=np.nan),  # the model's own score
        "map": ArraySpec("float16", map_shape, ("y", "x"), fill_value=np.nan),
        "frame_index": ArraySpec("int64", fill_value=-1),
        "timestamp": ArraySpec("float64", fill_value=np.nan),
        "valid": ArraySpec("bool", fill_value=False),
        "status": ArraySpec("uint8", fill_value=255),  # 255: no row written
    }
    for name in term_names:
        specs[f"term_{name}"] = ArraySpec("float32", fill_value=np.nan)
    return specs


EVENT_COLUMNS = {"event_id": "str", "start_frame": "int64", "end_frame": "int64", "start_time": "float64",
                 "end_time": "float64", "peak_frame": "int64", "peak_time": "float64", "peak_score": "float32",
                 "threshold": "float32", "snapshot": "str"}
_EVENT_FILL = {"str": "", "int64": -1, "float64": np.nan, "float32": np.nan}


class StoredStream(NamedTuple):
    """A stream already in a store: the input it was scored from, whether it is complete, and the
    frames on disk (what ``--resume`` continues from)."""

    source: str | None
    complete: bool
    written: int
    fingerprint: dict[str, int] | None = None  # the input's files when it was scored (Source.fingerprint)
    damage: str | None = None  # rows below ``written`` missing or unreadable (pipeline.store.integrity)


class ResultStore:
    """Writer side of a store. ``mode``: 'create' (refuse an existing store), 'overwrite', 'resume'.
    ``path``: a path, or an object-store URL (:mod:`pipeline.store.location`)."""

    def __init__(self, path: str | Path, run_attrs: dict[str, Any], mode: str = "create", flush_s: float = FLUSH_S) -> None:
        self.path = path if is_url(path) else Path(path)
        exists = check_target(self.path, mode)
        if mode == "resume" and exists:
            self.root = self._open_existing()
            check_same_run(self.path, self.root, run_attrs)
        else:
            try:
                self.root = zarr.open_group(zarr_store(self.path), mode="w")
            except Exception as error:  # noqa: BLE001
                raise StoreError(f"{self.path}: cannot create store ({error})") from None
            self.root.attrs.update({"format": STORE_FORMAT, "created": _now(), **run_attrs})
        self.streams: dict[str, zarr.Group] = {}
        self.arrays: dict[str, dict[str, zarr.Array]] = {}  # open handles: no metadata read per write
        self.next_row: dict[str, int] = {}  # rows arrived per stream (on disk or pending): the next write starts there
        self.accounting: dict[str, StreamAccounting] = {}
        self.maps_every: dict[str, int] = {}  # retention: the map of every Nth frame is kept (0: none)
        self._attrs_refreshed: dict[str, float] = {}
        self._camera_written: dict[str, float] = {}  # when each camera attr was last written (time.time())
        self.flush_s = flush_s  # rows wait in memory at most this long (0: written as they arrive)
        self._pending: dict[str, list[dict[str, np.ndarray]]] = {}  # rows arrived, not yet on disk
        self._names: dict[str, set[str]] = {}  # arrays rows were written to (attr ``arrays_written``)
        self._pending_since: dict[str, tuple[int, float]] = {}  # the first of them: (row, when it arrived)

    def _open_existing(self) -> zarr.Group:
        try:
            root = zarr.open_group(zarr_store(self.path), mode="r+")
        except Exception:  # noqa: BLE001
            raise StoreError(f"{self.path}: not a zarr store") from None
        if root.attrs.get("format") != STORE_FORMAT:
            raise StoreError(f"{self.path}: store format {root.attrs.get('format')!r} is not {STORE_FORMAT!r} "
                             f"(written by another version); score into a new store or pass --overwrite")
        return root

    def note_inputs(self, failed: list[str], left_out: list[str]) -> None:
        """The run's inputs that gave no stream (``failed``: errors) and the files left out of its
        folders, one message each (root attrs ``failed_inputs`` / ``left_out``, this run's)."""
        self.note_attrs({"failed_inputs": failed, "left_out": left_out})

    def note_attrs(self, attrs: dict[str, Any]) -> None:
        """Run-level facts into the root attrs (e.g. ``faults``: what the run survived)."""
        self.root.attrs.update(attrs)

    def stored_stream(self, stream_id: str) -> StoredStream | None:
        """What the store already holds of a stream (None: nothing, a new stream)."""
        return stored_stream(self.root, stream_id, self.path)

    def written(self, stream_id: str) -> int:
        """Frames already on disk for a stream (0 if the stream is new)."""
        if stream_id in self.root:
            return int(self.root[stream_id].attrs.get("written", 0))
        return 0

    def last_rows(self, stream_id: str, count: int, names: list[str]) -> dict[str, np.ndarray]:
        """The arrays ``names`` of the stream's last ``count`` rows on disk (fewer at its start; empty
        arrays for a new stream): what a resumed stream's trailing window continues from."""
        end = self.written(stream_id)
        group = self.root[stream_id] if end else None
        return {name: group[name][max(0, end - count):end] if group is not None else np.empty(0)
                for name in names if group is None or name in group}

    def open_stream(self, stream_id: str, arrays: dict[str, ArraySpec], chunk: int,
                    frame_count: int | None, attrs: dict[str, Any]) -> None:
        if stream_id in self.root and self.written(stream_id) > 0:
            group = self.root[stream_id]
            group.attrs.update({key: attrs[key] for key in RESUMED_ATTRS if key in attrs})
            handles = {name: group[name] for name in group.array_keys()}
        else:
            group = self.root.create_group(stream_id, overwrite=True,
                                           attributes={"written": 0, "complete": False, "error": None, **attrs})
            row_chunk = _round_up(ROW_CHUNK, chunk)
            capacity = frame_count or row_chunk  # a header's length is right most often: no resize at the end
            handles = {name: group.create_array(name, shape=(capacity, *spec.frame_shape),
                                                chunks=(chunk if spec.frame_shape else row_chunk, *spec.frame_shape),
                                                dtype=spec.dtype, fill_value=spec.fill_value,
                                                dimension_names=("frame", *spec.dimension_names))
                       for name, spec in arrays.items()}
        self.streams[stream_id] = group
        self.arrays[stream_id] = handles
        self.accounting[stream_id] = accounting = StreamAccounting(live=bool(attrs.get("live")))
        self.next_row[stream_id] = written = int(group.attrs.get("written", 0))
        if written and "status" in group:  # a resumed stream: what is on disk counts already
            accounting.count(group["status"][:written])
            accounting.add_gaps(list(group.attrs.get("gaps", [])))
        self.maps_every[stream_id] = int(group.attrs.get("maps_every", 1))
        self._attrs_refreshed[stream_id] = time.monotonic()
        self._pending[stream_id] = []
        self._names[stream_id] = set(group.attrs.get("arrays_written", []))

    def write(self, stream_id: str, row: int, values: dict[str, np.ndarray]) -> None:
        """Rows [row, row + n) of every array; batches arrive in frame order. They reach the
        disk (and ``written``) after FLUSH_ROWS rows (a live stream's also within ``flush_s`` s), or
        at :meth:`flush` / :meth:`close_stream`. A stream opened with the attr ``maps_every`` N != 1 keeps the map of
        frames whose index is a multiple of N only (0: no map); the others stay NaN, and chunks
        left all NaN are not stored.

        Raises StoreError when ``row`` is not the stream's next row (a batch before it was lost):
        ``written`` never covers rows that were not written."""
        if row != self.next_row[stream_id]:
            self.flush(stream_id)  # the rows before the hole are whole: kept
            raise StoreError(f"{self.path}: stream {stream_id}: rows from {row} arrive while {self.next_row[stream_id]} "
                             f"are written (a batch before them was lost); --resume continues from row "
                             f"{self.next_row[stream_id]}")
        every = self.maps_every[stream_id]
        if every != 1 and "map" in values:
            kept = values["frame_index"] % every == 0 if every else np.zeros(len(values["frame_index"]), bool)
            values = {**values, "map": np.where(kept[:, None, None], values["map"], np.float16(np.nan))}
        if "status" in values:
            self.accounting[stream_id].rows_written(values["status"], values["timestamp"], time.time())
        pending = self._pending[stream_id]
        if not pending:
            self._pending_since[stream_id] = (row, time.monotonic())
        pending.append(values)
        self.next_row[stream_id] = row + len(next(iter(values.values())))
        self.flush_due(stream_id)

    def flush_all(self) -> None:
        """Every stream's rows that arrived onto disk (a run ending without closing its streams)."""
        for stream_id in list(self._pending):
            self.flush(stream_id)

    def flush_due(self, stream_id: str | None = None) -> None:
        """Write the rows of a stream (None: of every stream) once FLUSH_ROWS wait, and a live stream's
        once the first of them waited ``flush_s`` s (``flush_s`` 0: every stream's as they come). A
        recording's rows wait for FLUSH_ROWS or its end: a lost writer's are scored again (takeover,
        ``--resume``), and each flush costs ~1 ms of CPU per array whatever its size."""
        now = time.monotonic()
        for key in [stream_id] if stream_id is not None else list(self._pending):
            if not self._pending.get(key):
                continue
            first_row, since = self._pending_since[key]
            timed = self.accounting[key].live or not self.flush_s
            if (timed and now - since >= self.flush_s) or self.next_row[key] - first_row >= FLUSH_ROWS:
                self.flush(key)

    def flush(self, stream_id: str) -> None:
        """Every row of the stream that arrived onto disk, then ``written`` (so it never covers a
        row that is not there)."""
        attrs = self._write_pending(stream_id)
        if attrs:
            self.streams[stream_id].attrs.update(attrs)

    def _write_pending(self, stream_id: str) -> dict[str, Any]:
        """The stream's rows that arrived onto disk; returns the attrs that then say so (``written``
        and others; empty: nothing was pending), for the caller to write in one update."""
        pending = self._pending.get(stream_id)
        if not pending:
            return {}
        values = {name: np.concatenate([rows[name] for rows in pending]) for name in pending[0]}
        arrays = self.arrays[stream_id]
        start, end = self._pending_since[stream_id][0], self.next_row[stream_id]
        capacity = arrays["score"].shape[0]
        if end > capacity:  # a live stream, or a recording longer than its header said
            step = max(array.chunks[0] for array in arrays.values())
            new_capacity = _round_up(max(end, capacity + max(step, capacity // 4)), step)  # trimmed at close
            for array in arrays.values():
                array.resize((new_capacity, *array.shape[1:]))
        for name, data in values.items():
            if name in arrays:  # a store resumed from before an array existed goes on without it
                arrays[name][start:end] = data
        pending.clear()
        attrs: dict[str, Any] = {"written": end}
        if not set(values) <= self._names[stream_id]:  # which arrays hold rows: what integrity checks require
            self._names[stream_id] |= set(values) & set(arrays)
            attrs["arrays_written"] = sorted(self._names[stream_id])
        if time.monotonic() - self._attrs_refreshed[stream_id] >= ATTRS_REFRESH_S:
            attrs.update(self.accounting[stream_id].attrs())
            self._attrs_refreshed[stream_id] = time.monotonic()
        return attrs

    def add_gaps(self, stream_id: str, gaps: list[dict[str, Any]]) -> None:
        """Intervals without frames (``{"start", "end", "kind"}``, seconds since the epoch), kept in
        the stream's ``gaps`` attr."""
        self.flush(stream_id)  # the counts written with them match the rows on disk
        self.accounting[stream_id].add_gaps(gaps)
        self.streams[stream_id].attrs.update(self.accounting[stream_id].attrs())

    def set_camera(self, stream_id: str, status: LiveStatus) -> None:
        """A camera's state (its decoder's :class:`~pipeline.sources.base.LiveStatus`), in the
        stream's ``camera`` attr at once: a camera that is down writes no rows to carry it."""
        before = self.accounting[stream_id].camera
        self.accounting[stream_id].camera = status
        now = time.time()
        written = self._camera_written.get(stream_id)
        if before is not None and before.state == status.state and written is not None and now - written < CAMERA_REWRITE_S:
            return  # the same state: its frame age is brought up to date every CAMERA_REWRITE_S (a PUT on object stores)
        self._camera_written[stream_id] = now
        self.streams[stream_id].attrs.update({"camera": status.to_dict(now)})

    def add_events(self, stream_id: str, events: list[dict[str, Any]]) -> None:
        """Append rows to the stream's ``events`` table: a subgroup of 1-D arrays along ``event``
        (``xarray.open_zarr(store, group="<stream>/events")``, or pandas via :func:`read_events`)."""
        if not events:
            return
        self.flush(stream_id)  # an event's frames are on disk before it is
        group = self.streams[stream_id]
        columns = {name: np.asarray([event.get(name) if event.get(name) is not None else _EVENT_FILL[dtype]
                                     for event in events], dtype=object if dtype == "str" else dtype)
                   for name, dtype in EVENT_COLUMNS.items()}
        if "events" not in group:  # made with the first rows' length: no resize of each column
            table = group.create_group("events")
            for name, dtype in EVENT_COLUMNS.items():
                table.create_array(name, shape=(len(events),), chunks=(256,), dtype=dtype, dimension_names=("event",),
                                   fill_value=_EVENT_FILL[dtype])[:] = columns[name]
            return
        table = group["events"]
        start = table["event_id"].shape[0]
        for name in EVENT_COLUMNS:
            column = table[name]
            column.resize((start + len(events),))
            column[start:] = columns[name]

    def close_stream(self, stream_id: str, error: str | None = None, warnings: list[str] | None = None,
                     stopped: bool = False) -> None:
        """``stopped``: a live stream ended by the run (duration, signal), not by its source. The
        rows that waited are written first; ``written`` and ``complete`` then go in one attrs update."""
        attrs = self._write_pending(stream_id)
        group = self.streams[stream_id]
        written = int(attrs.get("written", group.attrs["written"]))
        for array in self.arrays[stream_id].values():
            if array.shape[0] != written:
                array.resize((written, *array.shape[1:]))
        group.attrs.update({**attrs, "complete": error is None, "error": error, "finished": _now(),
                            "warnings": list(warnings or []), "stopped": stopped, **self.accounting[stream_id].attrs()})


def stored_precision(path: str | Path) -> str | None:
    """The precision the store at ``path`` was scored in (``fp32`` for stores from before the key
    existed), or None when there is no store there yet."""
    try:
        root = open_results(path)
    except Exception:  # noqa: BLE001 - no store (yet) or not one of ours: the run's own checks say so
        return None
    return str(root.attrs.get("precision", "fp32"))


def check_same_run(path: str | Path, root: zarr.Group, run_attrs: dict[str, Any]) -> None:
    """Raises StoreError (one line naming ``path``) when the store ``root`` was written by another model,
    checkpoint, calibration or precision than the run with ``run_attrs``: it cannot be resumed."""
    earlier = {"precision": "fp32"}  # stores from before a key existed
    for key in ("model", "checkpoint_sha256", "score_kind", "calibration", "precision"):
        stored = root.attrs.get(key, earlier.get(key))
        if key == "precision" and run_attrs.get(key) == "auto":
            continue  # resolved by the run, which keeps the store's own (pipeline.driver.run)
        if key in run_attrs and stored != run_attrs[key]:
            if isinstance(stored, dict) and isinstance(run_attrs[key], dict):  # a calibration: name what differs
                differ = sorted(name for name in {*stored, *run_attrs[key]} if stored.get(name) != run_attrs[key].get(name))
                what = f"another {key} ({', '.join(differ)} differ)"
            else:
                what = f"{key} {stored!r}, this run has {run_attrs[key]!r}"
            raise StoreError(f"{path}: cannot resume: store was written with {what}; score into another store, "
                             f"or --overwrite")


def stored_stream(root: zarr.Group, stream_id: str, store: str | Path = "store") -> StoredStream | None:
    """What the store ``root`` (named ``store`` in messages) already holds of a stream (None:
    nothing, a new stream), with the damage found below its ``written`` mark, if any."""
    if stream_id not in root:
        return None
    group = root[stream_id]
    attrs = group.attrs
    try:
        check_stream(group, stream_id, store)
        damage = None
    except DamagedStoreError as error:
        damage = str(error)
    return StoredStream(attrs.get("source"), bool(attrs.get("complete")), int(attrs.get("written", 0)),
                        attrs.get("source_fingerprint"), damage)


def check_target(path: str | Path, mode: str) -> bool:
    """Whether a store may be written at ``path`` (a path or an object-store URL) in ``mode``
    ('create': refuse an existing store, 'overwrite': replace stores only, 'resume'); returns
    whether something exists there. Raises StoreError (one line naming the path) otherwise, and
    for a URL whose store cannot be listed (credentials, endpoint, bucket): callers check before
    starting anything."""
    if mode not in ("create", "overwrite", "resume"):
        raise ValueError(f"unknown store mode {mode!r}")
    exists = holds_objects(path)
    if exists and mode == "create":
        raise StoreError(f"{path}: store already exists; pass --overwrite to replace it or --resume to continue it")
    if exists and mode == "overwrite" and not _is_store(path):
        raise StoreError(f"{path}: exists and is not an anomstream store; --overwrite replaces stores only "
                         f"(name a new path or remove it yourself)")
    return exists


def stream_key(name: str, max_bytes: int = 120) -> str:
    """A group name the store can hold for a stream named ``name`` (a file stem, a camera URL):
    no "/", not "." / ".." / "zarr.json", not starting with "__" (zarr v3 reserves it), at most
    ``max_bytes`` UTF-8 bytes (longer names keep their start and a hash of the whole)."""
    key = name.replace("/", "_").replace("\\", "_") or "stream"
    if key in (".", "..", "zarr.json") or key.startswith("__"):
        key = f"stream_{key}"
    encoded = key.encode("utf-8", "surrogateescape")
    if len(encoded) > max_bytes:
        digest = hashlib.sha1(encoded).hexdigest()[:10]
        key = encoded[: max_bytes - 11].decode("utf-8", "ignore") + "_" + digest
    return key


def read_events(path: str | Path, stream_id: str) -> dict[str, np.ndarray]:
    """A stream's events table as columns (``EVENT_COLUMNS``; empty arrays when it has none), e.g.
    ``pandas.DataFrame(read_events(path, stream))``."""
    group = open_results(path, check=False)[stream_id]
    if "events" not in group:
        return {name: np.zeros(0, object if dtype == "str" else dtype) for name, dtype in EVENT_COLUMNS.items()}
    table = group["events"]
    return {name: table[name][:] for name in EVENT_COLUMNS}


def open_results(path: str | Path, check: bool = True, maps: bool = False) -> zarr.Group:
    """Reader side: the store's root group (a path or an object-store URL), checked for format and,
    with ``check``, every stream for rows missing or unreadable below its ``written`` mark
    (DamagedStoreError naming the stream, the array and the rows: never a figure from fill values);
    ``maps``: the ``map`` arrays too (for readers of maps)."""
    path = path if is_url(path) else Path(path)
    if not holds_objects(path):
        raise StoreError(f"{path}: no such store")
    try:
        root = zarr.open_group(zarr_store(path, read_only=True), mode="r")
    except Exception:  # noqa: BLE001
        raise StoreError(f"{path}: not a zarr store") from None
    if root.attrs.get("format") != STORE_FORMAT:
        raise StoreError(f"{path}: not an anomstream store (format {root.attrs.get('format')!r})")
    if check:
        for stream_id in sorted(member_keys(root.group_keys)):
            check_stream(root[stream_id], stream_id, path, maps)
    return root


def _is_store(path: str | Path) -> bool:
    try:
        return zarr.open_group(zarr_store(path, read_only=True), mode="r").attrs.get("format") == STORE_FORMAT
    except Exception:  # noqa: BLE001 - anything unreadable is not one of ours
        return False


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
