"""The zarr v3 result store (:mod:`.results`) and the accounting of every frame in it (:mod:`.accounting`)."""

from .accounting import FrameStatus, StreamAccounting
from .results import (
    EVENT_COLUMNS,
    STORE_FORMAT,
    ArraySpec,
    ResultStore,
    StoredStream,
    check_target,
    open_results,
    read_events,
    result_arrays,
    stream_key,
)

__all__ = ["EVENT_COLUMNS", "STORE_FORMAT", "ArraySpec", "FrameStatus", "ResultStore", "StoredStream", "StreamAccounting",
           "check_target", "open_results", "read_events", "result_arrays", "stream_key"]
