"""Writer actor: the one process that writes a store; receives batches in frame order."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from pipeline.store import ArraySpec, ResultStore, StoredStream
from pipeline.stream.scorer import unscored_rows
from pipeline.stream.windows import WindowBatch


@ray.remote
class WriterActor:
    """Created empty; ``open`` opens the store so its errors reach the caller as StoreError."""

    def open(self, path: str, run_attrs: dict[str, Any], mode: str) -> None:
        self.store = ResultStore(path, run_attrs, mode)
        self.specs: dict[str, dict[str, ArraySpec]] = {}

    def note_inputs(self, failed: list[str], left_out: list[str]) -> None:
        self.store.note_inputs(failed, left_out)

    def stored_stream(self, stream_id: str) -> StoredStream | None:
        return self.store.stored_stream(stream_id)

    def open_stream(self, stream_id: str, arrays: dict[str, ArraySpec], chunk: int,
                    frame_count: int | None, attrs: dict[str, Any]) -> None:
        self.store.open_stream(stream_id, arrays, chunk, frame_count, attrs)
        self.specs[stream_id] = arrays

    def write(self, stream_id: str, start: int, values: dict[str, np.ndarray]) -> int:
        self.store.write(stream_id, start, values)
        return start + len(values["score"])

    def write_unscored(self, stream_id: str, start: int, batch: WindowBatch, dropped: bool) -> int:
        """A batch that no replica scores: nothing in it to score, or dropped (policy ``latest``)."""
        return self.write(stream_id, start, unscored_rows(batch, self.specs[stream_id], dropped))

    def add_gaps(self, stream_id: str, gaps: list[dict[str, Any]]) -> None:
        self.store.add_gaps(stream_id, gaps)

    def accounting(self) -> dict[str, dict[str, Any]]:
        """Per open stream: its accounting attrs (frame counts, latency, gaps) as of now."""
        return {stream_id: accounting.attrs() for stream_id, accounting in self.store.accounting.items()}

    def close_stream(self, stream_id: str, error: str | None = None, warnings: list[str] | None = None,
                     stopped: bool = False) -> None:
        self.store.close_stream(stream_id, error, warnings, stopped)
