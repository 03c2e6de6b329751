"""Writer actor: the one process that writes a store; receives batches in frame order."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from pipeline.store import ArraySpec, ResultStore


@ray.remote
class WriterActor:
    """Created empty; ``open`` opens the store so its errors reach the caller as StoreError."""

    def open(self, path: str, run_attrs: dict[str, Any], mode: str) -> None:
        self.store = ResultStore(path, run_attrs, mode)

    def note_inputs(self, failed: list[str], left_out: list[str]) -> None:
        self.store.note_inputs(failed, left_out)

    def written(self, stream_id: str) -> int:
        return self.store.written(stream_id)

    def source_of(self, stream_id: str) -> str | None:
        """The input a stream already in the store was scored from (None: a new stream)."""
        return self.store.root[stream_id].attrs.get("source") if stream_id in self.store.root else None

    def is_complete(self, stream_id: str) -> bool:
        return stream_id in self.store.root and bool(self.store.root[stream_id].attrs.get("complete"))

    def open_stream(self, stream_id: str, arrays: dict[str, ArraySpec], chunk: int,
                    frame_count: int | None, attrs: dict[str, Any]) -> None:
        self.store.open_stream(stream_id, arrays, chunk, frame_count, attrs)

    def write(self, stream_id: str, start: int, values: dict[str, np.ndarray]) -> int:
        self.store.write(stream_id, start, values)
        return start + len(values["score"])

    def close_stream(self, stream_id: str, error: str | None = None, warnings: list[str] | None = None) -> None:
        self.store.close_stream(stream_id, error, warnings)
