"""Frame sources: video files, frame folders, image folders and cameras, all as frame iterators.

A source knows nothing of models: it yields RGB uint8 frames with their stream id, index and
timestamp. Live sources (cameras) are generators that may never end.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import SourceError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
CAMERA_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")


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
    """Base: iterate frames; ``frame_count`` is None when unknown (live or unindexed)."""

    stream_id: str
    frame_count: int | None = None
    fps: float | None = None
    is_live: bool = False

    def describe(self) -> str:
        raise NotImplementedError

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError


class FrameFolderSource(Source):
    """A folder of frames of one video, in numeric filename order."""

    def __init__(self, folder: Path, stream_id: str | None = None, fps: float = 25.0) -> None:
        self.folder = folder
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
    image that cannot be decoded leaves a gap (it is skipped and listed in ``skipped``) and every
    stored frame still names its file through ``items()``."""

    def __init__(self, paths: list[Path], stream_id: str, description: str) -> None:
        if not paths:
            raise SourceError(f"{description}: no images")
        self.paths = paths
        self.stream_id = stream_id
        self.frame_count = len(paths)
        self.fps = 1.0
        self.description = description
        self.skipped: list[str] = []

    def describe(self) -> str:
        return self.description

    def items(self) -> list[str]:
        return [str(p) for p in self.paths]

    def frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            try:
                image = read_image(path)
            except SourceError as error:
                self.skipped.append(str(error))
                continue
            yield Frame(self.stream_id, index, float(index), image)


def image_folder_source(folder: Path, stream_id: str | None = None) -> ImageListSource:
    """A folder of independent still images."""
    paths = list_images(folder)
    if not paths:
        raise SourceError(f"{folder}: no image files in folder")
    return ImageListSource(paths, stream_id or folder.name, str(folder))


class VideoFileSource(Source):
    """A video file decoded with PyAV; OpenCV when PyAV cannot open it.

    A corrupt or truncated file raises SourceError after yielding every frame decoded before
    the damage, so those frames are still scored.
    """

    def __init__(self, path: Path, stream_id: str | None = None) -> None:
        self.path = path
        self.stream_id = stream_id or path.stem
        self._backend = "pyav"
        try:
            import av

            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise SourceError(f"{path}: no video stream in file")
                stream = container.streams.video[0]
                self.frame_count = stream.frames or None
                self.fps = float(stream.average_rate) if stream.average_rate else None
        except SourceError:
            raise
        except Exception as pyav_error:  # noqa: BLE001 - any PyAV failure falls back to OpenCV
            self._backend = "opencv"
            self._probe_opencv(pyav_error)

    def _probe_opencv(self, pyav_error: Exception) -> None:
        import cv2

        capture = cv2.VideoCapture(str(self.path))
        ok = capture.isOpened() and capture.read()[0]
        if not ok:
            capture.release()
            reason = str(pyav_error).splitlines()[0] if str(pyav_error) else type(pyav_error).__name__
            raise SourceError(f"{self.path}: cannot decode video ({reason})")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None
        self.fps = capture.get(cv2.CAP_PROP_FPS) or None
        capture.release()

    def describe(self) -> str:
        return str(self.path)

    def frames(self) -> Iterator[Frame]:
        return self._frames_pyav() if self._backend == "pyav" else self._frames_opencv()

    def _frames_pyav(self) -> Iterator[Frame]:
        import av

        index = 0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    timestamp = float(frame.time) if frame.time is not None else index / (self.fps or 25.0)
                    yield Frame(self.stream_id, index, timestamp, frame.to_ndarray(format="rgb24"))
                    index += 1
        except av.FFmpegError as error:
            raise SourceError(f"{self.path}: video is corrupt or truncated after frame {index} ({error})") from error
        if self.frame_count and index < self.frame_count:
            raise SourceError(f"{self.path}: video is truncated: decoded {index} of {self.frame_count} frames")

    def _frames_opencv(self) -> Iterator[Frame]:
        import cv2

        capture = cv2.VideoCapture(str(self.path))
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
        if self.frame_count and index < self.frame_count:
            raise SourceError(f"{self.path}: video is truncated: decoded {index} of {self.frame_count} frames")


class CameraSource(Source):
    """A live camera: device index, rtsp:// or http(s):// URL, read with OpenCV. Never ends by itself.

    When the camera stops sending frames it is reopened up to ``reconnect_attempts`` times in a row
    (waiting ``reconnect_wait_s``, doubled each try); frame indices continue across reconnections.
    """

    is_live = True

    def __init__(self, address: str, stream_id: str | None = None, max_frames: int | None = None,
                 open_timeout_s: float = 10.0, reconnect_attempts: int = 3, reconnect_wait_s: float = 1.0) -> None:
        self.address = address
        self.stream_id = stream_id or re.sub(r"[^A-Za-z0-9_.-]+", "_", address).strip("_") or "camera"
        self.max_frames = max_frames
        self.frame_count = max_frames
        self.open_timeout_s = open_timeout_s
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_wait_s = reconnect_wait_s
        self.reconnections = 0

    def describe(self) -> str:
        return self.address

    def _open(self):
        import cv2

        target: int | str = int(self.address) if self.address.isdigit() else self.address
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.open_timeout_s * 1000)]
        capture = cv2.VideoCapture(target, cv2.CAP_ANY, params)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.address}: camera is unreachable or cannot be opened")
        return capture

    def frames(self) -> Iterator[Frame]:
        import cv2

        capture = self._open()
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


def open_sources(spec: str, max_frames: int | None = None, still_images: bool = False,
                 dataset_split: str = "test") -> list[Source]:
    """Resolve one source spec into sources.

    - a video file -> one stream named after the file
    - a folder of images -> one stream: frames of a video in numeric order, or with
      ``still_images`` independent stills (an undecodable image is skipped and reported)
    - a folder of video files and/or frame folders (e.g. Ped2 ``testing/frames``) -> one stream each
    - a camera: a device index (``0``) or an rtsp/http(s) URL
    - a labelled still-image dataset: ``mtd:ROOT``, ``mvtec:CATEGORY``, ``mvtec_loco:CATEGORY`` or
      ``ksdd2:ROOT`` (``?split=train|test``), one stream per class (see :mod:`pipeline.datasets`)
    - a line-scan camera or recording: ``linescan:SPEC?tile=H&stride=S`` (see :mod:`pipeline.linescan`)
    """
    from pipeline.datasets import dataset_sources, is_dataset_spec
    from pipeline.linescan import SCHEME, linescan_sources

    if spec.startswith(SCHEME):
        return linescan_sources(spec, lambda inner: open_sources(inner, max_frames))
    if is_dataset_spec(spec):
        return dataset_sources(spec, dataset_split)
    if spec.isdigit() or spec.startswith(CAMERA_SCHEMES):
        return [CameraSource(spec, max_frames=max_frames)]
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise SourceError(f"{spec}: unsupported file type {path.suffix or '(none)'}; "
                              f"expected a video ({', '.join(sorted(VIDEO_SUFFIXES))})")
        return [VideoFileSource(path)]
    folder_source = image_folder_source if still_images else FrameFolderSource
    if list_images(path):
        return [folder_source(path)]
    sources: list[Source] = []
    for child in sorted(path.iterdir(), key=numeric_sort_key):
        if child.is_dir() and list_images(child):
            sources.append(folder_source(child))
        elif child.is_file() and child.suffix.lower() in VIDEO_SUFFIXES:
            sources.append(VideoFileSource(child))
    if not sources:
        raise SourceError(f"{spec}: folder holds no images, frame folders or videos")
    return sources
