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
    stream_id: str
    index: int
    timestamp: float  # seconds since the stream's start (file sources) or since the epoch (cameras)
    image: np.ndarray  # (H, W, 3) uint8 RGB


class Source:
    """Base: iterate frames; ``frame_count`` is None when unknown (live or unindexed).

    ``warnings`` collects what went wrong without ending the stream (an image that could not be
    decoded, fewer frames than the container header promised); filled while ``frames()`` runs.
    """

    stream_id: str
    frame_count: int | None = None
    fps: float | None = None
    is_live: bool = False
    warnings: list[str]

    def describe(self) -> str:
        raise NotImplementedError

    def items(self) -> list[str] | None:
        """The file of each frame index (still images), stored with the stream; None: frames of one video."""
        return None

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError
