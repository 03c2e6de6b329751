"""The zarr v3 result store (:mod:`.results`) and the accounting of every frame in it (:mod:`.accounting`)."""

from pipeline.store.accounting import FrameStatus, StreamAccounting
from pipeline.store.results import (
    STORE_FORMAT,
    ArraySpec,
    ResultStore,
    StoredStream,
    check_target,
    open_results,
    result_arrays,
    stream_key,
)

__all__ = ["STORE_FORMAT", "ArraySpec", "FrameStatus", "ResultStore", "StoredStream", "StreamAccounting",
           "check_target", "open_results", "result_arrays", "stream_key"]
