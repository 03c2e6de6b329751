"""The window step for live streams: the source is read on a thread of its own, so a camera is
drained as fast as it sends, and the scorer takes whatever is ready (dynamic batching).

Policies (per stream):

- ``every``: lossless for what the source delivers; at most ``buffer_frames`` frames wait, then
  reading pauses (backpressure to the source). A batch takes the oldest ``batch`` frames waiting.
- ``latest``: bounded latency; reading never pauses. The driver asks for a batch when a replica
  is free, and the batch scores the newest ``batch`` frames only; older
  frames waiting, and frames captured more than ``max_latency_ms`` before the batch is made,
  become DROPPED_BEHIND. Whole windows are dropped, never frames inside one: the
  frames of a scored window stay contiguous because every batch carries its own context.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Literal

from ..errors import SourceError, error_reason
from ..sources.base import Frame, Gap, LiveStatus, Source, model_frames
from ..visualize import picture_jpeg
from .windows import EndOfStream, WindowAssembler, WindowBatch

Policy = Literal["every", "latest"]
PREVIEW_EVERY_S = 0.4  # a stream's picture for the live view at most this often (the page polls every 0.5 s)


@dataclass(frozen=True)
class LiveOptions:
    """``policy``: None = ``latest`` for cameras, ``every`` for recordings played live;
    ``max_latency_ms``: policy ``latest`` drops frames older than this when a batch is made;
    ``batch``: frames per live batch at most (None: the run decides, 1 on CPU replicas, where a
    window costs about the same alone as in a batch and a large batch on one replica makes the
    frames behind it wait while the other replica idles; the score batch size on GPUs);
    ``frozen_after_s``: the same image for this long is a frozen feed (not scored);
    ``idle_wait_s``: how long a request waits for a first frame before it answers "nothing yet";
    ``maps_every``: retention, the store keeps the anomaly map of every Nth frame (0: none; scores
    and status are always kept); ``preview_size``: a batch whose newest target is the newest frame
    read carries that frame's picture scaled to this longer side, as JPEG, for the live view (0: none)."""

    policy: Policy | None = None
    max_latency_ms: float | None = None
    batch: int | None = None
    maps_every: int = 1
    frozen_after_s: float | None = 5.0
    idle_wait_s: float = 0.5
    preview_size: int = 0

    def policy_for(self, source: Source) -> Policy:
        """The stream's own (a cameras file's), else the run's, else the source kind's."""
        return source.settings.policy or self.policy or source.live_policy


class LiveWindows:
    """Reads ``source`` on a daemon thread into a :class:`WindowAssembler`; :meth:`next` hands out
    batches of what is ready."""

    def __init__(self, source: Source, window_length: int, batch_size: int, image_size: int, channels: int,
                 options: LiveOptions) -> None:
        self.source, self.batch_size, self.options = source, batch_size, options
        self.policy = options.policy_for(source)
        self.buffer_frames = 4 * batch_size + window_length
        self.assembler = WindowAssembler(source.stream_id, window_length, image_size, channels, options.frozen_after_s)
        self.changed = threading.Condition()
        self.stopping = False
        self.done = False
        self.error: str | None = None
        self.newest: Frame | None = None  # the newest frame read, as the camera sent it (for the view's picture)
        self.held = False  # the reader waits for room in the buffer (policy every): it reads nothing
        self._preview_due = 0.0  # monotonic time from which the next picture for the view is made
        source.use_size(image_size, options.preview_size)
        self.thread = threading.Thread(target=self._read, name=f"read {source.stream_id}", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        error = None
        try:
            for item in model_frames(self.source, self.assembler.channels):  # as the model's other frames
                with self.changed:
                    if self.policy == "every" and len(self.assembler.pending) >= self.buffer_frames:
                        self.held = True
                        self.changed.wait_for(lambda: len(self.assembler.pending) < self.buffer_frames or self.stopping)
                        self.held = False
                    if isinstance(item, Gap):  # noted even when stopping: the gap is over
                        self.assembler.note_gap(item)
                    elif not self.stopping:
                        self.assembler.push(item)
                        self.newest = item
                    if self.stopping:
                        break
                    self.changed.notify_all()
        except SourceError as failure:
            error = str(failure)
        except Exception as failure:  # noqa: BLE001 - a library error ends this stream only
            error = f"{self.source.describe()}: decoding failed ({error_reason(failure)})"
        with self.changed:
            self.done, self.error = True, error
            self.changed.notify_all()

    def next(self) -> tuple[WindowBatch | None, tuple[Gap, ...]] | EndOfStream:
        """What is ready: (a batch, or None when no frame came within ``idle_wait_s``; the gaps that
        ended since the last call), or the EndOfStream once the source ended (or was stopped) and
        every frame was handed out."""
        with self.changed:
            assembler = self.assembler
            self.changed.wait_for(lambda: assembler.pending or assembler.gaps or self.done or self.stopping,
                                  timeout=self.options.idle_wait_s)
            if not assembler.pending:
                if self.done or self.stopping:
                    now = time.time()
                    assembler.end(now)
                    gap = self.source.open_gap(now)
                    gaps = assembler.take_gaps() + ((gap,) if gap is not None else ())
                    return EndOfStream(self.source.stream_id, assembler.count, self.error, gaps=gaps)
                return None, assembler.take_gaps()
            latest = self.policy == "latest"
            max_age = self.options.max_latency_ms / 1000 if latest and self.options.max_latency_ms else None
            batch = assembler.batch(self.options.batch or self.batch_size, newest=latest,
                                    max_age_s=max_age, now=time.time())
            self.changed.notify_all()  # room in the buffer
            newest, gaps = self.newest, assembler.take_gaps()
        if batch is not None and self.options.preview_size and newest is not None and batch.size \
                and int(batch.frame_index[-1]) == newest.index and time.monotonic() >= self._preview_due:
            self._preview_due = time.monotonic() + PREVIEW_EVERY_S  # the page shows about two a second
            batch.preview = (newest.index, picture_jpeg(newest.image, self.options.preview_size))  # outside the lock
        return batch, gaps

    def camera_status(self, now: float) -> LiveStatus | None:
        """The source's :meth:`~pipeline.sources.base.Source.live_status` at ``now``: a camera whose
        reader waits on the scorer stays ``live`` (its newest frame ages because nothing reads it)."""
        return self.source.live_status(now, held=self.held)

    def stop(self) -> None:
        """Stop reading: what was read is still handed out, then the EndOfStream."""
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
