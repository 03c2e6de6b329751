"""The store's rows of a window batch that is not (or not yet) scored; torch-free, for the writer."""

from __future__ import annotations

import numpy as np

from ..store import ArraySpec, FrameStatus
from .windows import WindowBatch


def unscored_rows(batch: WindowBatch, arrays: dict[str, ArraySpec], dropped: bool = False) -> dict[str, np.ndarray]:
    """The store's rows of a batch before (or instead of) scoring: every array at its fill value but
    ``frame_index``, ``timestamp``, ``status`` and ``valid``. ``dropped``: the batch is not scored
    (live policy ``latest``, replicas behind): its SCORED targets become DROPPED_BEHIND; every other
    status (warm-up, a gap, a frame that could not be decoded) stays what the window step gave."""
    rows = {name: np.full((batch.size, *spec.frame_shape), spec.fill_value, spec.dtype) for name, spec in arrays.items()}
    status = batch.status.copy()
    if dropped:
        status[status == FrameStatus.SCORED] = FrameStatus.DROPPED_BEHIND
    rows["frame_index"][:], rows["timestamp"][:], rows["status"][:] = batch.frame_index, batch.timestamp, status
    rows["valid"][:] = status == FrameStatus.SCORED
    return rows
