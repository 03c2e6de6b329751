"""A recorded source played as a live stream: frames released at their own pace, stamped with the
wall-clock time of their release (``--realtime``: tests, demos, the live benchmark)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from .base import Frame, Gap, Source


class RealtimeSource(Source):
    """Wraps a file or folder source: frame i is released ``i / fps`` seconds after the first
    (fps: the source's, else 25) and its timestamp becomes that release time (seconds since the
    epoch), as a camera's would be. ``max_frames``: stop after that many, as a camera would."""

    is_live = True

    def __init__(self, inner: Source, max_frames: int | None = None) -> None:
        self.inner, self.max_frames = inner, max_frames
        self.stream_id = inner.stream_id
        counts = [n for n in (inner.frame_count, max_frames) if n]
        self.frame_count = min(counts) if counts else None
        self.fps = inner.fps or 25.0
        self.warnings = inner.warnings

    def describe(self) -> str:
        return self.inner.describe()

    def items(self) -> list[str] | None:
        return self.inner.items()

    def fingerprint(self) -> dict[str, int] | None:
        return self.inner.fingerprint()

    def use_grey(self) -> None:
        self.inner.use_grey()

    def frames(self) -> Iterator[Frame | Gap]:
        started = None
        position = 0
        for frame in self.inner.frames():
            if isinstance(frame, Gap):
                yield frame
                continue
            if self.max_frames is not None and position >= self.max_frames:
                return
            if started is None:
                started = time.monotonic()
            time.sleep(max(0.0, started + position / self.fps - time.monotonic()))
            yield Frame(frame.stream_id, frame.index, time.time(), frame.image, frame.damaged)
            position += 1
