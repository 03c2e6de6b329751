"""Video files as sources: PyAV (OpenCV fallback), upright by their display matrix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import SourceError, error_reason
from pipeline.files import files_fingerprint
from pipeline.sources.base import Frame, Source
from pipeline.sources.probe import NotAFileError, NotAVideoError, probe_video


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
        except (NotAVideoError, NotAFileError):
            raise
        except SourceError as pyav_error:
            if backend == "pyav":
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

    def fingerprint(self) -> dict[str, int]:
        return files_fingerprint([self.path])

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
