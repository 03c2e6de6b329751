"""A damaged store is named, not trusted: chunks missing or unreadable below a stream's ``written`` mark.

zarr reads a chunk that is not in the store as the array's fill value, so a chunk lost from disk
or a bucket (a partial copy, a cleanup job, a disk error) would silently become NaN scores or
``-1`` frame indices, and a figure computed from them would look like a result. Which chunks must
be there follows from what the writer writes (zarr stores no chunk that equals the fill value):

- ``status`` (fill 255, "no row") and ``frame_index`` (fill -1): every chunk below ``written``;
- the score arrays (``score``, ``score_raw``, ``term_*``, ``valid``): every chunk with a scored row;
- ``map``: every chunk with a scored row whose map is kept (``maps_every``).

:func:`check_stream` lists the chunk keys once per array and reads the 1-D arrays chunk by chunk
(a chunk that cannot be decoded is damage too), raising :class:`DamagedStoreError` in one line that
names the stream, the array and the rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import zarr
from zarr.errors import ZarrUserWarning

from ..errors import StoreError, first_line
from .accounting import FrameStatus

SCORE_ARRAYS = ("score", "score_raw", "valid")


class DamagedStoreError(StoreError):
    """Rows below a stream's ``written`` mark are missing from the store or cannot be read."""


def member_keys(keys: Callable[[], Iterable[str]]) -> list[str]:
    """``keys()`` (a group's ``array_keys`` or ``group_keys``) without zarr's "not recognized as a
    component" warning for a member a running writer is creating (no zarr.json yet: not listed)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Object at .* is not recognized as a component", ZarrUserWarning)
        return list(keys())


def check_stream(group: zarr.Group, stream_id: str, store: Any, maps: bool = False) -> None:
    """Raise DamagedStoreError when a chunk that must hold rows below the stream's ``written`` mark
    is missing or cannot be decoded (``store``: how the store is named in the message). The arrays
    checked are those the writer wrote rows to (attr ``arrays_written``; a store from before it:
    the per-frame arrays holding at least one chunk); ``maps``: the ``map`` array too (listed, not
    decoded: a long live stream holds many map chunks, so only readers of maps ask for it)."""
    written = int(group.attrs.get("written", 0))
    names = {name for name in member_keys(group.array_keys) if group[name].ndim > 0 and (maps or name != "map")}
    if written == 0 or "frame_index" not in names:
        return
    listed = _Listing(group)
    declared = group.attrs.get("arrays_written")
    required = set(declared) & names if declared else {name for name in names if group[name].ndim > 1 or listed(name)}
    if "frame_index" not in required:
        return
    frame_index = _checked(group, "frame_index", np.ones(written, bool), listed, stream_id, store)
    if "status" in required:
        scored = _checked(group, "status", np.ones(written, bool), listed, stream_id, store) == FrameStatus.SCORED
    elif "valid" in required:
        scored = _checked(group, "valid", np.zeros(written, bool), listed, stream_id, store).astype(bool)
    else:
        scored = np.zeros(written, bool)
    maps_every = int(group.attrs.get("maps_every", 1))
    for name in sorted(required - {"frame_index", "status"}):
        needed = _needed_rows(name, scored, frame_index, maps_every)
        if needed is not None and group[name].shape[0] >= written:
            _checked(group, name, needed, listed, stream_id, store, read=group[name].ndim == 1)


class _Listing:
    """Row-chunk indices each array of a group holds, listed once per array when first asked."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        self.found: dict[str, set[int]] = {}

    def __call__(self, name: str) -> set[int]:
        if name not in self.found:
            self.found[name] = _stored_chunk_rows(self.group[name])
        return self.found[name]


def _checked(group: zarr.Group, name: str, needed: np.ndarray, listed: _Listing, stream_id: str,
             store: Any, read: bool = True) -> np.ndarray | None:
    """Array ``name``'s rows below ``written`` after checking that every chunk holding a needed row
    is stored (and, with ``read``, that every chunk decodes). A chunk the listing lacks is asked
    for by name before it counts as missing (a listing may lag behind, on NFS or some object stores)."""
    array, written = group[name], len(needed)
    step = array.chunks[0]
    missing = [chunk for chunk in sorted({row // step for row in np.flatnonzero(needed)} - listed(name))
               if not _chunk_exists(array, chunk)]
    if missing:
        raise _damage(store, stream_id, name, step, missing, written, "missing from the store")
    return read_rows(group, name, written, stream_id, store) if read else None


def read_rows(group: zarr.Group, name: str, end: int, stream_id: str, store: Any) -> np.ndarray:
    """Rows [0, end) of array ``name``; a chunk that cannot be decoded raises DamagedStoreError
    naming its rows."""
    array = group[name]
    try:
        return array[:end]
    except Exception:  # noqa: BLE001 - a codec's or the storage's error: find the chunk
        pass
    step = array.chunks[0]
    for first in range(0, end, step):
        try:
            array[first:min(first + step, end)]
        except Exception as error:  # noqa: BLE001
            raise _damage(store, stream_id, name, step, [first // step], end,
                          f"unreadable ({first_line(error, 120)})") from None
    return array[:end]


def _needed_rows(name: str, scored: np.ndarray, frame_index: np.ndarray | None, maps_every: int) -> np.ndarray | None:
    """Per row below ``written``: whether a chunk holding it must be in the store (None: no rule)."""
    if name in SCORE_ARRAYS or name.startswith("term_"):
        return scored
    if name == "map":
        if maps_every == 0:
            return None
        kept = np.ones(len(scored), bool) if maps_every == 1 or frame_index is None else frame_index % maps_every == 0
        return scored & kept
    return None


def _stored_chunk_rows(array: zarr.Array) -> set[int]:
    """Row-chunk indices of the chunks the store holds: one listing of the array's ``c/`` folder
    (one level for a per-frame array, whose chunk keys are ``c/I``; every key for a map, whose
    ``c/I`` is a folder that may be left empty)."""
    from zarr.core.sync import sync

    folder = array.store_path.path.rstrip("/") + "/c"
    store = array.store_path.store

    async def keys() -> list[str]:
        if array.ndim == 1:
            return [key async for key in store.list_dir(folder)]
        return [key[len(folder) + 1:] async for key in store.list_prefix(folder + "/")]

    return {int(key.strip("/").split("/")[0]) for key in sync(keys()) if key.strip("/").split("/")[0].isdigit()}


def _chunk_exists(array: zarr.Array, row_chunk: int) -> bool:
    """Whether the chunk at row-chunk ``row_chunk`` (first along every other axis) is in the store."""
    from zarr.core.sync import sync

    key = array.metadata.encode_chunk_key((row_chunk, *([0] * (array.ndim - 1))))
    return bool(sync(array.store_path.store.exists(f"{array.store_path.path.rstrip('/')}/{key}")))


def _damage(store: Any, stream_id: str, name: str, step: int, chunks: list[int], written: int,
            what: str) -> DamagedStoreError:
    first = chunks[0] * step
    last = min((chunks[0] + 1) * step, written) - 1
    more = f" (and {len(chunks) - 1} more chunk(s))" if len(chunks) > 1 else ""
    return DamagedStoreError(f"{store}: stream {stream_id}: array {name} rows {first}-{last}{more} of the {written} "
                             f"written are {what}: the store is damaged; score the stream again into a new store "
                             f"(or --overwrite)")

