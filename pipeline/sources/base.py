"""The frame and the source interface every source implements."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
    image: np.ndarray  # (H, W, 3) uint8 RGB; (H, W) grey from a source told Source.use_grey()
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


CAMERA_STATES = ("connecting", "live", "stalled", "down", "auth_failed", "stopped")


@dataclass(frozen=True)
class LiveStatus:
    """Where a live source stands at ``at`` (seconds since the epoch), as its reader knows it.

    ``state``: ``connecting`` (the first connection is being made), ``live`` (frames arrive),
    ``stalled`` (connected, but no frame for the stall timeout: a hung camera or network),
    ``down`` (closed or unreachable; being reconnected with backoff), ``auth_failed`` (the camera
    refused the credentials; retried with a long backoff, then given up), ``stopped`` (the stream
    ended). ``since``: when it entered the state; ``last_frame``: capture time of the newest frame
    (None: none yet); ``reason``: one line on why it is not live (no secrets); ``info``: what the
    camera sends, once connected (:meth:`Source.stream_info`)."""

    state: str
    since: float
    last_frame: float | None = None
    reason: str | None = None
    info: dict[str, str | int | float | None] | None = None

    def to_dict(self, now: float) -> dict[str, Any]:
        """JSON-ready, with ``last_frame_age_s`` (seconds before ``now``; None without a frame)."""
        age = None if self.last_frame is None else round(max(0.0, now - self.last_frame), 3)
        return {"state": self.state, "since": self.since, "last_frame": self.last_frame,
                "last_frame_age_s": age, "reason": self.reason, "info": self.info}


@dataclass(frozen=True)
class StreamSettings:
    """A stream's own settings (a camera of a cameras file) over the run's; None: the run's.
    ``policy`` (``every``/``latest``), ``keep_maps`` (the map of every Nth frame), the events'
    ``threshold`` and ``low_threshold`` (calibrated score units)."""

    policy: str | None = None
    keep_maps: int | None = None
    threshold: float | None = None
    low_threshold: float | None = None


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
    # whether the writer judges if the model fits the stream's scene (pipeline.calibration.scene); not for a
    # labelled test split's anomaly class, anomalous by construction
    scene_checked: bool = True
    settings: StreamSettings = StreamSettings()  # a cameras file's own values for this stream
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

    def live_status(self, now: float, held: bool = False) -> LiveStatus | None:
        """Where a camera stands at ``now`` (seconds since the epoch), safe to ask from another
        thread than the one reading ``frames()``; None for sources that are not cameras. ``held``:
        its reader waits on the scorer (policy ``every``), so the newest frame's age says nothing
        of the camera."""
        return None

    def stream_info(self) -> dict[str, str | int | float | None] | None:
        """What a camera sends (``codec``, ``width``, ``height``, ``fps``, ``transport``) once it is
        connected; None for other sources and cameras that do not say."""
        return None

    def use_size(self, model: int, picture: int = 0) -> None:
        """A hint before :meth:`frames`: frames are used at ``model`` px square (the model's input)
        and, when ``picture``, as a picture of that longer side (the live view). A source whose
        decoder can scale decodes to that (:class:`pipeline.sources.network.DecodeSize`); the
        others ignore it and give frames as decoded."""

    def use_grey(self) -> None:
        """A hint before :meth:`frames`: the model reads one channel. A source whose decoder can give
        grey straight away (image files: a JPEG's own luma, the very pixels a colour decode turned
        grey would give for a grey JPEG) gives (H, W) frames; the others ignore it."""

    def frames(self) -> Iterator[Frame | Gap]:
        """Frames in order; live sources also yield a :class:`Gap` where frames were missing."""
        raise NotImplementedError


def model_frames(source: Source, channels: int) -> Iterator[Frame | Gap]:
    """``source.frames()`` for a model of ``channels`` (1 grey, 3 RGB): grey decoded as such where
    the source can (:meth:`Source.use_grey`; 0.2-0.4 ms of CPU less per JPEG frame)."""
    if channels == 1:
        source.use_grey()
    return source.frames()
