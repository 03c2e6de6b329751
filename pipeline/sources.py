"""Frame sources: video files, frame folders, image folders and cameras, all as frame iterators.

A source knows nothing of models: it yields RGB uint8 frames, upright as a player shows them, with
their stream id, index and timestamp. Live sources (cameras) are generators that may never end.
Which sources a command-line spec names is decided in :mod:`pipeline.inputs`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import SourceError
from pipeline.probe import NotAVideoError, error_reason, probe_video

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
# OpenCV's FFmpeg logs to stderr what our one-line errors already say ("EBML header parsing failed")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


@dataclass
class Frame:
    stream_id: str
    index: int
    timestamp: float  # seconds since the stream's start (file sources) or since the epoch (cameras)
    image: np.ndarray  # (H, W, 3) uint8 RGB


def numeric_sort_key(path: Path) -> tuple:
    """Natural order: 1.jpg < 2.jpg < 10.jpg, frame9 < frame10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def list_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
                  key=numeric_sort_key)


def read_image(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"{path}: cannot decode image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


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

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError


class FrameFolderSource(Source):
    """A folder of frames of one video, in numeric filename order."""

    def __init__(self, folder: Path, stream_id: str | None = None, fps: float = 25.0) -> None:
        self.folder = folder
        self.warnings = []
        self.paths = list_images(folder)
        if not self.paths:
            raise SourceError(f"{folder}: no image files in folder")
        self.stream_id = stream_id or folder.name
        self.frame_count = len(self.paths)
        self.fps = fps

    def describe(self) -> str:
        return str(self.folder)

    def frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            yield Frame(self.stream_id, index, index / self.fps, read_image(path))


class ImageListSource(Source):
    """Still images from a list, as one stream. The frame index is the position in the list, so an
    image that cannot be decoded leaves a gap (it is skipped and named in ``warnings``) and every
    stored frame still names its file through ``items()``."""

    def __init__(self, paths: list[Path], stream_id: str, description: str) -> None:
        if not paths:
            raise SourceError(f"{description}: no images")
        self.paths = paths
        self.stream_id = stream_id
        self.frame_count = len(paths)
        self.fps = 1.0
        self.description = description
        self.warnings = []

    def describe(self) -> str:
        return self.description

    def items(self) -> list[str]:
        return [str(p) for p in self.paths]

    def frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            try:
                image = read_image(path)
            except SourceError as error:
                self.warnings.append(f"skipped {error}")
                continue
            yield Frame(self.stream_id, index, float(index), image)


def image_folder_source(folder: Path, stream_id: str | None = None) -> ImageListSource:
    """A folder of independent still images."""
    paths = list_images(folder)
    if not paths:
        raise SourceError(f"{folder}: no image files in folder")
    return ImageListSource(paths, stream_id or folder.name, str(folder))


class VideoFileSource(Source):
    """A video file decoded with PyAV; OpenCV when PyAV cannot open it. Frames come upright: a
    display rotation in the container (phones store portrait video sideways with a display
    matrix) is applied as players apply it.

    The frame count of a container header is an estimate: a stream that ends cleanly is complete
    (fewer frames than the header said is a warning). A decode error raises SourceError after
    every frame decoded before the damage has been yielded, so those frames are still scored.

    Raises (at construction): NotAVideoError when the file holds no video stream, SourceError when
    it cannot be read or decoded.
    """

    def __init__(self, path: Path, stream_id: str | None = None, backend: str = "auto") -> None:
        """``backend``: "auto" (PyAV, OpenCV when PyAV cannot open the file), "pyav" or "opencv"."""
        self.path = path
        self.stream_id = stream_id or path.stem
        self.warnings = []
        self._backend = "pyav"
        self._stream_index = 0
        try:
            probe = probe_video(path)
        except NotAVideoError:
            raise
        except SourceError as pyav_error:
            if backend == "pyav" or not path.is_file() or path.stat().st_size == 0:
                raise
            self._backend = "opencv"
            self._probe_opencv(pyav_error)
            return
        self._stream_index, self.frame_count, self.fps = probe.stream_index, probe.frame_count, probe.fps
        if backend == "opencv":
            self._backend = "opencv"
            self._probe_opencv(SourceError(f"{path}: OpenCV cannot decode this video"))

    def _probe_opencv(self, pyav_error: SourceError) -> None:
        import cv2

        capture = self._capture()
        ok = capture.isOpened() and capture.read()[0]
        if not ok:
            capture.release()
            raise pyav_error
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None
        self.fps = capture.get(cv2.CAP_PROP_FPS) or None
        capture.release()

    def _capture(self):
        import cv2

        capture = cv2.VideoCapture(str(self.path))
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)  # upright as players show it (OpenCV's default too)
        return capture

    def describe(self) -> str:
        return str(self.path)

    def frames(self) -> Iterator[Frame]:
        return self._frames_pyav() if self._backend == "pyav" else self._frames_opencv()

    def _frames_pyav(self) -> Iterator[Frame]:
        import av

        index = 0
        last_time = None
        try:
            container = av.open(str(self.path))
        except (OSError, av.FFmpegError) as error:
            raise SourceError(f"{self.path}: cannot decode video ({error_reason(error)})") from None
        with container:
            stream = container.streams[self._stream_index]
            stream.thread_type = "SLICE"  # frame threading hides decode errors: a cut file would end "cleanly"
            try:
                for frame in container.decode(stream):
                    timestamp = float(frame.time) if frame.time is not None else index / (self.fps or 25.0)
                    last_time = frame.time
                    yield Frame(self.stream_id, index, timestamp, upright(frame.to_ndarray(format="rgb24"), frame.rotation))
                    index += 1
            except av.FFmpegError as error:
                raise SourceError(f"{self.path}: video is truncated: decoded {index} of "
                                  f"{self.frame_count or 'an unknown number of'} frames ({error_reason(error)})") from error
            if not self._check_count(index):
                self._check_duration(container, stream, last_time)

    def _check_duration(self, container, stream, last_time: float | None) -> None:
        """Warn when the stream ended well before the duration its header gives (a cut file in a
        container without an index: Matroska, MPEG-TS, AVI)."""
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        if stream.duration:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1e6  # AV_TIME_BASE
        else:
            return
        interval = 1.0 / self.fps if self.fps else 0.04
        ended = (last_time - start + interval) if last_time is not None else 0.0
        if duration - ended > 2 * interval:
            self.warnings.append(f"{self.path}: the stream ended cleanly after {ended:.2f} s, the container header "
                                 f"said {duration:.2f} s (a cut file?)")

    def _frames_opencv(self) -> Iterator[Frame]:
        import cv2

        capture = self._capture()
        index = 0
        try:
            while True:
                ok, image = capture.read()
                if not ok:
                    break
                yield Frame(self.stream_id, index, index / (self.fps or 25.0), cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
                index += 1
        finally:
            capture.release()
        self._check_count(index)

    def _check_count(self, decoded: int) -> bool:
        """Warn (and say so) when the header's frame count was not what the stream held."""
        if self.frame_count and decoded != self.frame_count:
            self.warnings.append(f"{self.path}: the container header said {self.frame_count} frames, "
                                 f"the stream ended cleanly after {decoded}")
            return True
        return False


def upright(image: np.ndarray, rotation: float) -> np.ndarray:
    """Turn a decoded (H, W, C) frame as its display matrix says. ``rotation``: degrees
    counter-clockwise (FFmpeg's ``av_display_rotation_get``, PyAV's ``VideoFrame.rotation``);
    FFmpeg's own auto-rotation likewise handles multiples of 90 degrees."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


class CameraSource(Source):
    """A live camera: a device (index or /dev/videoN), rtsp://, http(s):// or another FFmpeg URL,
    read with OpenCV. Never ends by itself.

    The first connection is retried (waits doubling from ``reconnect_wait_s``) until
    ``connect_timeout_s`` has passed, so a camera that comes up after the run starts is caught.
    When the camera stops sending frames it is reopened up to ``reconnect_attempts`` times in a row
    (waiting ``reconnect_wait_s``, doubled each try); frame indices continue across reconnections.
    """

    is_live = True

    def __init__(self, address: str, stream_id: str | None = None, max_frames: int | None = None,
                 open_timeout_s: float = 10.0, reconnect_attempts: int = 3, reconnect_wait_s: float = 1.0,
                 device: int | None = None, connect_timeout_s: float = 0.0) -> None:
        self.address = address
        self.device = device  # a camera index: ``address`` is then how the user named it (camera:1)
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", address.split("?", 1)[0]).strip("_")  # no tokens in names
        self.stream_id = stream_id or readable or "camera"
        self.max_frames = max_frames
        self.frame_count = max_frames
        self.open_timeout_s = open_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_wait_s = reconnect_wait_s
        self.reconnections = 0
        self.warnings = []

    def describe(self) -> str:
        return self.address

    def _open(self):
        import cv2

        target: int | str = self.device if self.device is not None else self.address
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.open_timeout_s * 1000)]
        capture = cv2.VideoCapture(target, cv2.CAP_ANY, params)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.address}: camera is unreachable or cannot be opened")
        return capture

    def _connect(self):
        """The first connection, retried until ``connect_timeout_s`` has passed."""
        deadline = time.monotonic() + self.connect_timeout_s
        wait = self.reconnect_wait_s
        while True:
            try:
                return self._open()
            except SourceError as error:
                if time.monotonic() + wait > deadline:
                    if self.connect_timeout_s > 0:
                        raise SourceError(f"{error} (retried for {self.connect_timeout_s:g} s)") from None
                    raise
            time.sleep(wait)
            wait *= 2

    def frames(self) -> Iterator[Frame]:
        import cv2

        capture = self._connect()
        index = 0
        failures = 0
        try:
            while self.max_frames is None or index < self.max_frames:
                ok, image = capture.read()
                if ok:
                    failures = 0
                    yield Frame(self.stream_id, index, time.time(), cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
                    index += 1
                    continue
                capture.release()
                if failures >= self.reconnect_attempts:
                    raise SourceError(f"{self.address}: camera stopped sending frames after frame {index}"
                                      f" ({failures} reconnection attempts failed)")
                time.sleep(self.reconnect_wait_s * 2 ** failures)
                failures += 1
                try:
                    capture = self._open()
                    self.reconnections += 1
                except SourceError:
                    capture = cv2.VideoCapture()  # not opened: its read fails and the next attempt follows
        finally:
            capture.release()


