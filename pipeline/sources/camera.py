"""Live cameras and network streams as sources, read with OpenCV."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

from pipeline.errors import SourceError
from pipeline.sources.base import Frame, Source


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
