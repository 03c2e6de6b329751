"""The frame and the source interface every source implements."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# OpenCV's FFmpeg logs to stderr what our one-line errors already say ("EBML header parsing failed")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


@dataclass(frozen=True)
class Frame:
    """One frame of a source. ``damaged``: not a real picture (its packet could not be decoded, and
    ``image`` only stands in for it; or FFmpeg flags the picture corrupt: concealed, or decoded
    before the first keyframe): the frame keeps its index and row with status DECODE_ERROR and is
    never scored, nor part of a scored window."""

    stream_id: str
    index: int
    timestamp: float  # seconds since the stream's start (file sources) or since the epoch (cameras)
    image: np.ndarray  # (H, W, 3) uint8 RGB
    damaged: bool = False


@dataclass(frozen=True)
class Gap:
    """An interval without usable frames in a live stream, in seconds since the epoch.

    ``kind``: ``disconnect`` (the source closed or failed and was reopened), ``stall`` (no frame for
    the stall timeout), ``frozen`` (the same image repeated). A live source yields it among its
    frames when the gap ends, before the first frame after it."""

    start: float
    end: float
    kind: str

    def to_dict(self) -> dict[str, float | str]:
        return {"start": self.start, "end": self.end, "kind": self.kind}


class Source:
    """Base: iterate frames; ``frame_count`` is None when unknown (live or unindexed).

    ``warnings`` collects what went wrong without ending the stream (an image that could not be
    decoded, fewer frames than the container header promised); filled while ``frames()`` runs.
    """

    stream_id: str
    frame_count: int | None = None
    fps: float | None = None
    is_live: bool = False
    live_policy: str = "every"  # frame policy when scored live (pipeline.stream.live): cameras "latest"
    warnings: list[str]

    def describe(self) -> str:
        raise NotImplementedError

    def fingerprint(self) -> dict[str, int] | None:
        """What tells whether the input changed since its stream was scored (``--resume`` refuses a
        changed one): :func:`pipeline.files.files_fingerprint` of its files; None for a live source."""
        return None

    def items(self) -> list[str] | None:
        """The file of each frame index (still images), stored with the stream; None: frames of one video."""
        return None

    def open_gap(self, now: float) -> Gap | None:
        """The gap the source is in at ``now`` (seconds since the epoch), ended there; None if none
        (a live source down when its stream ends)."""
        return None

    def frames(self) -> Iterator[Frame | Gap]:
        """Frames in order; live sources also yield a :class:`Gap` where frames were missing."""
        raise NotImplementedError
