"""Decode actor: owns one source at a time and turns its frames into window batches on request.

Actors are pooled by the driver: when a source ends, the same actor opens the next one, so a
job of many short clips does not pay a process start per clip.
"""

from __future__ import annotations

from dataclasses import replace

import ray

from pipeline.sources.base import Source
from pipeline.stream.windows import BatchHeader, EndOfStream, WindowBatch, window_batches


@ray.remote
class DecodeActor:
    def ready(self) -> bool:
        return True

    def open(self, source: Source, window_length: int, batch_size: int, image_size: int, channels: int,
             skip_before: int = 0) -> None:
        self._source = source
        self._batches = window_batches(source.frames(), source.stream_id, window_length, batch_size,
                                       image_size, channels, skip_before)

    @ray.method(num_returns=2)
    def next_batch(self) -> tuple[BatchHeader | EndOfStream, WindowBatch | None]:
        """(what the driver needs to know, the batch itself or None at the end of the stream)."""
        item = next(self._batches)
        if isinstance(item, EndOfStream):
            return replace(item, warnings=tuple(self._source.warnings)), None
        return item.header(), item
