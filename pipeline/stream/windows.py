"""The source -> window step: prepared frames grouped into batches of scoring windows.

A ``WindowBatch`` holds B target frames plus up to T-1 frames of context before them, so a
replica can build every (T, C, H, W) window without state of its own. Targets with no full
window (the first T-1 frames of a stream) are marked invalid and get a NaN score.

Line-scan cameras slot in before this step: :func:`pipeline.sources.linescan.assemble_tiles` turns a
stream of pixel rows into overlapping 2-D tiles, which are frames like any other.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.errors import SourceError
from pipeline.sources.base import Frame
from pipeline.stream.preprocess import prepare_frame


@dataclass
class WindowBatch:
    stream_id: str
    sequence: int  # batch number within the stream, from 0
    start: int  # frame index of the first target
    frames: np.ndarray  # uint8 (context + B, C, H, W)
    context: int  # frames before the first target held in ``frames``
    frame_index: np.ndarray  # (B,) int64
    timestamp: np.ndarray  # (B,) float64
    window_length: int

    @property
    def size(self) -> int:
        return len(self.frame_index)

    def header(self) -> BatchHeader:
        return BatchHeader(self.stream_id, self.sequence, self.start, self.size)

    @property
    def valid(self) -> np.ndarray:
        """Targets whose full window of ``window_length`` frames is present."""
        positions = self.context + np.arange(self.size)
        return positions >= self.window_length - 1

    def windows(self) -> np.ndarray:
        """(n_valid, T, C, H, W) windows of the valid targets."""
        t = self.window_length
        positions = self.context + np.flatnonzero(self.valid)
        return np.stack([self.frames[p - t + 1:p + 1] for p in positions]) if len(positions) else \
            np.empty((0, t, *self.frames.shape[1:]), dtype=self.frames.dtype)


@dataclass(frozen=True)
class BatchHeader:
    """What the driver learns of a decoded batch; the batch itself travels by object reference
    from the decoder to a replica."""

    stream_id: str
    sequence: int  # batch number within the stream, from 0
    start: int  # frame index of the first target
    size: int  # targets (rows the batch writes)


@dataclass(frozen=True)
class EndOfStream:
    """What a window step yields last: how the stream ended (``error`` None: cleanly), and what went
    wrong without ending it (``warnings``, filled by the decoder from its source)."""

    stream_id: str
    frames: int  # frames decoded, those of a resumed run's skipped batches included
    error: str | None = None
    warnings: tuple[str, ...] = ()


def window_batches(frames: Iterator[Frame], stream_id: str, window_length: int, batch_size: int,
                   image_size: int, channels: int, skip_before: int = 0) -> Iterator[WindowBatch | EndOfStream]:
    """Prepare frames once and group them into batches; a source error ends the stream after the
    frames decoded before it are flushed (so they are still scored).

    ``skip_before``: frames already in the store (resume). They are counted in decoded frames, which
    are the store's rows, not by frame index: a still image that could not be decoded has an index
    but no row. Their batches are not yielded; they still serve as context.
    """
    context_size = window_length - 1
    history: list[np.ndarray] = []  # the last ``context_size`` prepared frames before the batch
    pending: list[tuple[np.ndarray, int, float]] = []
    sequence = 0
    count = 0
    flushed = 0  # decoded frames in batches already made (yielded or skipped)

    def flush() -> WindowBatch | None:
        nonlocal history, pending, sequence, flushed
        if not pending:
            return None
        images = [p[0] for p in pending]
        batch = WindowBatch(
            stream_id=stream_id, sequence=sequence, start=pending[0][1],
            frames=np.stack(history + images), context=len(history),
            frame_index=np.array([p[1] for p in pending], dtype=np.int64),
            timestamp=np.array([p[2] for p in pending], dtype=np.float64), window_length=window_length,
        )
        history = (history + images)[len(history + images) - context_size:] if context_size else []
        flushed += len(pending)
        pending = []
        sequence += 1
        return batch if flushed > skip_before else None

    error = None
    try:
        for frame in frames:
            pending.append((prepare_frame(frame.image, image_size, channels), frame.index, frame.timestamp))
            count += 1
            if len(pending) == batch_size:
                batch = flush()
                if batch is not None:
                    yield batch
    except SourceError as failure:
        error = str(failure)
    batch = flush()
    if batch is not None:
        yield batch
    yield EndOfStream(stream_id, count, error)

