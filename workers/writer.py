"""Writer actor: the one process that writes a store; receives batches in frame order."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from pipeline.store import ArraySpec, ResultStore, StoredStream


@ray.remote
class WriterActor:
    """Created empty; ``open`` opens the store so its errors reach the caller as StoreError."""

    def open(self, path: str, run_attrs: dict[str, Any], mode: str) -> None:
        self.store = ResultStore(path, run_attrs, mode)

    def note_inputs(self, failed: list[str], left_out: list[str]) -> None:
        self.store.note_inputs(failed, left_out)

    def stored_stream(self, stream_id: str) -> StoredStream | None:
        return self.store.stored_stream(stream_id)

    def open_stream(self, stream_id: str, arrays: dict[str, ArraySpec], chunk: int,
                    frame_count: int | None, attrs: dict[str, Any]) -> None:
        self.store.open_stream(stream_id, arrays, chunk, frame_count, attrs)

    def write(self, stream_id: str, start: int, values: dict[str, np.ndarray]) -> int:
        self.store.write(stream_id, start, values)
        return start + len(values["score"])

    def close_stream(self, stream_id: str, error: str | None = None, warnings: list[str] | None = None) -> None:
        self.store.close_stream(stream_id, error, warnings)
