"""The source -> window step: prepared frames grouped into batches of scoring windows.

A ``WindowBatch`` holds B target frames plus up to T-1 frames of context before them, so a
replica can build every (T, C, H, W) window without state of its own. Each target carries a
:class:`~pipeline.store.FrameStatus`: only ``SCORED`` targets have a full window of contiguous
frames (none across a gap, a frozen stretch, a drop or a frame that could not be decoded) and are
scored; the others keep NaN scores.

Line-scan cameras slot in before this step: :func:`pipeline.sources.linescan.assemble_tiles` turns a
stream of pixel rows into overlapping 2-D tiles, which are frames like any other.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import SourceError
from ..sources.base import Frame, Gap, LiveStatus
from ..store import FrameStatus
from .preprocess import prepare_frame


@dataclass(frozen=True)
class WindowShape:
    """What the window step needs of a model: ``window_length`` frames per window (1: still
    images), ``image_size`` (the square side frames are resized to, pixels), ``channels`` (1 grey,
    3 RGB)."""

    window_length: int
    image_size: int
    channels: int

    @classmethod
    def of(cls, model) -> WindowShape:
        """The shape of an ``AnomalyModel`` (or anything with those three attributes)."""
        return cls(model.window_length, model.image_size, model.channels)


@dataclass
class WindowBatch:
    stream_id: str
    sequence: int  # batch number within the stream, from 0
    first_frame_index: int  # frame index (in its source) of the first target
    frames: np.ndarray  # uint8 (K, C, H, W): the images of the last K positions of context + targets
    context: int  # position in ``frames`` of the first target; < 0: the first -context targets carry no image
    frame_index: np.ndarray  # (B,) int64
    timestamp: np.ndarray  # (B,) float64, the frame's capture time (seconds; since the epoch for live sources)
    status: np.ndarray  # (B,) uint8 FrameStatus: SCORED = has a full window and is to be scored
    window_length: int
    preview: tuple[int, bytes] | None = None  # live view: (frame index, JPEG of the camera's picture) of a target
    source_size: tuple[int, int] | None = None  # (H, W) of the frames as decoded: an event snapshot's shape

    @property
    def size(self) -> int:
        return len(self.frame_index)

    @property
    def valid(self) -> np.ndarray:
        """(B,) bool: targets to score (their full window of ``window_length`` frames is in ``frames``)."""
        return self.status == FrameStatus.SCORED

    def header(self, gaps: tuple[Gap, ...] = ()) -> BatchHeader:
        newest = float(self.timestamp.max()) if self.size else math.nan
        return BatchHeader(self.stream_id, self.sequence, self.first_frame_index, self.size, int(self.valid.sum()), newest, gaps)

    def windows(self) -> np.ndarray:
        """(n_valid, T, C, H, W) windows of the valid targets."""
        t = self.window_length
        positions = self.context + np.flatnonzero(self.valid)
        return np.stack([self.frames[p - t + 1:p + 1] for p in positions]) if len(positions) else \
            np.empty((0, t, *self.frames.shape[1:]), dtype=self.frames.dtype)


@dataclass(frozen=True)
class BatchHeader:
    """What the driver learns of a decoded batch; the batch itself travels by object reference
    from the decoder to a replica (or straight to the writer when nothing in it is to be scored)."""

    stream_id: str
    sequence: int  # batch number within the stream, from 0
    first_frame_index: int  # frame index (in its source) of the first target
    size: int  # targets (rows the batch writes); 0: no frame yet, only ``gaps`` (live)
    scorable: int = 0  # targets with status SCORED
    newest: float = math.nan  # capture time of the newest target (seconds)
    gaps: tuple[Gap, ...] = ()  # gaps that ended since the previous batch (live)
    camera: LiveStatus | None = None  # where a camera stands as the batch is handed out (live)


@dataclass(frozen=True)
class EndOfStream:
    """What a window step yields last: how the stream ended (``error`` None: cleanly), and what went
    wrong without ending it (``warnings``, filled by the decoder from its source)."""

    stream_id: str
    frames: int  # frames decoded, those of a resumed run's skipped batches included
    error: str | None = None
    warnings: tuple[str, ...] = ()
    gaps: tuple[Gap, ...] = ()  # gaps that ended since the last batch (live)
    camera: LiveStatus | None = None  # a camera's last state (live)


class WindowAssembler:
    """Prepares frames once, gives each its status and hands out batches of targets with context.

    ``frozen_after_s``: a live feed repeating the very same image for this long is frozen: from
    then until the image changes its frames get FROZEN (a :class:`Gap` of kind ``frozen`` is noted
    when it ends), and windows restart after it as after any gap.
    """

    def __init__(self, stream_id: str, window_length: int, image_size: int, channels: int,
                 frozen_after_s: float | None = None) -> None:
        self.stream_id, self.window_length = stream_id, window_length
        self.image_size, self.channels = image_size, channels
        self.frozen_after_s = frozen_after_s
        self.history: list[np.ndarray] = []  # the last T-1 prepared frames before ``pending``
        self.pending: list[tuple[np.ndarray, int, float, int]] = []  # (image, index, timestamp, status)
        self.gaps: list[Gap] = []  # ended since the last batch
        self.sequence = 0
        self.count = 0  # frames pushed
        self._run = 0  # contiguous usable frames up to the last one pushed
        self._after_gap = False
        self._last: np.ndarray | None = None
        self._same_since = math.nan  # capture time of the first frame of the current run of equal images
        self._frozen = False
        self.source_size: tuple[int, int] | None = None  # (H, W) of the newest real frame as decoded

    def push(self, frame: Frame) -> None:
        """Prepare ``frame`` and give it its status. A damaged frame (``Frame.damaged``: not a real
        picture) is DECODE_ERROR and breaks windows as a gap does: no scored window holds it."""
        image = prepare_frame(frame.image, self.image_size, self.channels)
        if not frame.damaged:
            self.source_size = (int(frame.image.shape[0]), int(frame.image.shape[1]))
        if frame.damaged:
            status = FrameStatus.DECODE_ERROR
            self._run, self._after_gap = 0, True
        elif self._is_frozen(image, frame.timestamp):
            status = FrameStatus.FROZEN
            self._run, self._after_gap = 0, True
        else:
            self._run += 1
            if self._run >= self.window_length:
                status = FrameStatus.SCORED
            else:
                status = FrameStatus.SOURCE_GAP if self._after_gap else FrameStatus.WARMUP
        self.pending.append((image, frame.index, frame.timestamp, int(status)))
        self.count += 1

    def note_gap(self, gap: Gap) -> None:
        """Frames were missing before the next frame: no window spans the gap (a frozen stretch
        going on ends where the gap starts)."""
        if self._frozen:
            self.gaps.append(Gap(self._same_since, gap.start, "frozen"))
            self._frozen = False
        self._run, self._after_gap = 0, True
        self._last = None
        self.gaps.append(gap)

    def _is_frozen(self, image: np.ndarray, timestamp: float) -> bool:
        if self.frozen_after_s is None:
            return False
        same = self._last is not None and np.array_equal(image, self._last)
        self._last = image
        if not same:
            if self._frozen:
                self.gaps.append(Gap(self._same_since, timestamp, "frozen"))
                self._frozen = False
            self._same_since = timestamp
            return False
        self._frozen = self._frozen or timestamp - self._same_since >= self.frozen_after_s
        return self._frozen

    def batch(self, limit: int | None = None, newest: bool = False, max_age_s: float | None = None,
              now: float | None = None) -> WindowBatch | None:
        """The next batch (None: no frame pending). ``limit``: at most this many targets to score;
        ``newest``: take every pending frame and score only the newest ``limit`` (the older ones
        become DROPPED_BEHIND, policy ``latest``), else take the oldest ``limit`` and leave the
        rest pending. ``max_age_s``: SCORED frames captured before ``now - max_age_s`` are dropped."""
        if not self.pending:
            return None
        take = self.pending if newest or limit is None else self.pending[:limit]
        timestamp = np.array([p[2] for p in take], dtype=np.float64)
        status, dropped = self._drop(take, timestamp, limit if newest else None, max_age_s, now)
        images = self.history + [p[0] for p in take]
        first = len(self.history)  # position of the first target in ``images``
        keep_from = self._first_image_needed(status, first, len(images)) if dropped else 0
        kept = images[keep_from:]
        batch = WindowBatch(
            stream_id=self.stream_id, sequence=self.sequence, first_frame_index=take[0][1],
            frames=np.stack(kept) if kept else np.empty((0, self.channels, self.image_size, self.image_size), np.uint8),
            context=first - keep_from, frame_index=np.array([p[1] for p in take], dtype=np.int64),
            timestamp=timestamp, status=status, window_length=self.window_length, source_size=self.source_size,
        )
        context_size = self.window_length - 1
        self.history = images[max(0, len(images) - context_size):] if context_size else []
        self.pending = self.pending[len(take):]
        self.sequence += 1
        return batch

    @staticmethod
    def _drop(take: list, timestamp: np.ndarray, keep_newest: int | None, max_age_s: float | None,
              now: float | None) -> tuple[np.ndarray, bool]:
        """The targets' statuses with the SCORED ones not among the newest ``keep_newest`` or older
        than ``max_age_s`` made DROPPED_BEHIND; whether any was."""
        status = np.array([p[3] for p in take], dtype=np.uint8)
        drop = np.zeros(len(take), bool)
        if keep_newest is not None:
            drop[:max(0, len(take) - keep_newest)] = True
        if max_age_s is not None:
            drop |= timestamp < (now if now is not None else 0.0) - max_age_s
        drop &= status == FrameStatus.SCORED
        status[drop] = FrameStatus.DROPPED_BEHIND
        return status, bool(drop.any())

    def _first_image_needed(self, status: np.ndarray, first: int, count: int) -> int:
        """After drops: the first of ``count`` images (targets from position ``first``) that a
        scored target's window needs; images of dropped frames travel only as such context."""
        still = np.flatnonzero(status == FrameStatus.SCORED)
        return first + int(still[0]) - (self.window_length - 1) if len(still) else count

    def end(self, now: float) -> None:
        """The stream ends at ``now``: a frozen stretch still going on is noted as a gap up to then."""
        if self._frozen:
            self.gaps.append(Gap(self._same_since, now, "frozen"))
            self._frozen = False

    def take_gaps(self) -> tuple[Gap, ...]:
        gaps, self.gaps = tuple(self.gaps), []
        return gaps


def window_batches(frames: Iterator[Frame | Gap], stream_id: str, window_length: int, batch_size: int,
                   image_size: int, channels: int, skip_before: int = 0) -> Iterator[WindowBatch | EndOfStream]:
    """Batches of ``batch_size`` targets in frame order; a source error ends the stream after the
    frames decoded before it are flushed (so they are still scored).

    ``skip_before``: frames already in the store (resume). They are counted in decoded frames, which
    are the store's rows, not by frame index: a still image that could not be decoded has an index
    but no row. Their batches are not yielded; they still serve as context.
    """
    assembler = WindowAssembler(stream_id, window_length, image_size, channels)
    flushed = 0  # decoded frames in batches already made (yielded or skipped)

    def flush() -> WindowBatch | None:
        nonlocal flushed
        batch = assembler.batch(batch_size)
        if batch is None:
            return None
        flushed += batch.size
        return batch if flushed > skip_before else None

    error = None
    try:
        for item in frames:
            if isinstance(item, Gap):
                assembler.note_gap(item)
                continue
            assembler.push(item)
            if len(assembler.pending) == batch_size:
                batch = flush()
                if batch is not None:
                    yield batch
    except SourceError as failure:
        error = str(failure)
    batch = flush()
    if batch is not None:
        yield batch
    yield EndOfStream(stream_id, assembler.count, error, gaps=assembler.take_gaps())
