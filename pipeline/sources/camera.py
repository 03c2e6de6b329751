"""Live cameras and network streams as sources, read with OpenCV, reconnected without end."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.errors import SourceError
from pipeline.sources.base import Frame, Gap, Source


@dataclass(frozen=True)
class Reconnect:
    """How a camera is (re)connected.

    ``attempts``: failed attempts in a row before the stream fails for good (None: never);
    waits grow from ``backoff_s`` doubling up to ``max_backoff_s``, each with jitter (half the wait
    plus a random share of the other half), so many clients of one camera do not retry in step.
    ``stall_timeout_s``: no frame for this long reconnects and records a gap of kind ``stall``.
    ``connect_timeout_s``: the first connection is retried this long (None: as long as
    ``attempts`` allows; 0: one try).
    """

    attempts: int | None = None
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    stall_timeout_s: float = 10.0
    connect_timeout_s: float | None = 0.0

    def wait_s(self, failures: int) -> float:
        """Seconds to wait before attempt ``failures + 1``."""
        wait = min(self.max_backoff_s, self.backoff_s * 2 ** min(failures, 30))
        return wait / 2 + random.uniform(0, wait / 2)

    def gives_up(self, failures: int) -> bool:
        return self.attempts is not None and failures >= self.attempts


class CameraSource(Source):
    """A live camera: a device (index or /dev/videoN), rtsp://, http(s):// or another FFmpeg URL,
    read with OpenCV. Never ends by itself.

    When the camera stops sending frames (closed, failed, or silent for the stall timeout) it is
    reopened with backoff (:class:`Reconnect`); frame indices continue across reconnections and a
    :class:`~pipeline.sources.base.Gap` from the last frame before to the first frame after is
    yielded between them. Raises SourceError (one line, naming the address) when the first
    connection or the reconnections are given up.
    """

    is_live = True
    live_policy = "latest"

    def __init__(self, address: str, stream_id: str | None = None, max_frames: int | None = None,
                 open_timeout_s: float = 10.0, reconnect: Reconnect | None = None, device: int | None = None) -> None:
        self.address = address
        self.device = device  # a camera index: ``address`` is then how the user named it (camera:1)
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", address.split("?", 1)[0]).strip("_")  # no tokens in names
        self.stream_id = stream_id or readable or "camera"
        self.max_frames = max_frames
        self.frame_count = max_frames
        self.open_timeout_s = open_timeout_s
        self.reconnect = reconnect or Reconnect()
        self.reconnections = 0
        self.warnings = []
        self._gap: tuple[float, str] | None = None  # (last frame's time, kind) while the camera is down

    def open_gap(self, now: float) -> Gap | None:
        return Gap(self._gap[0], now, self._gap[1]) if self._gap is not None else None

    def describe(self) -> str:
        return self.address

    def _open(self):
        import cv2

        target: int | str = self.device if self.device is not None else self.address
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.reconnect.stall_timeout_s * 1000)]
        capture = cv2.VideoCapture(target, cv2.CAP_ANY, params)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.address}: camera is unreachable or cannot be opened")
        return capture

    def _connect(self):
        """The first connection, retried until ``connect_timeout_s`` has passed or ``attempts`` failed."""
        policy = self.reconnect
        deadline = None if policy.connect_timeout_s is None else time.monotonic() + policy.connect_timeout_s
        failures = 0
        while True:
            try:
                return self._open()
            except SourceError as error:
                failures += 1
                wait = policy.wait_s(failures - 1)
                if deadline is not None and time.monotonic() + wait > deadline:
                    if not policy.connect_timeout_s:
                        raise
                    raise SourceError(f"{error} (retried for {policy.connect_timeout_s:g} s)") from None
                if policy.gives_up(failures - 1):
                    raise SourceError(f"{error} ({failures} attempts)") from None
            time.sleep(wait)

    def frames(self) -> Iterator[Frame | Gap]:
        import cv2

        capture = self._connect()
        index = 0
        failures = 0  # reconnection attempts since the last frame
        last_frame = time.time()
        try:
            while self.max_frames is None or index < self.max_frames:
                reading = time.monotonic()
                ok, image = capture.read() if capture is not None else (False, None)
                if ok:
                    now = time.time()
                    if self._gap is not None:
                        gap, self._gap = self.open_gap(now), None
                        yield gap
                    failures = 0
                    yield Frame(self.stream_id, index, now, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
                    index, last_frame = index + 1, now
                    continue
                if self._gap is None:
                    silent = capture is not None and time.monotonic() - reading >= 0.9 * self.reconnect.stall_timeout_s
                    self._gap = (last_frame, "stall" if silent else "disconnect")
                if capture is not None:
                    capture.release()
                if self.reconnect.gives_up(failures):
                    raise SourceError(f"{self.address}: camera stopped sending frames after frame {index}"
                                      f" ({failures} reconnection attempts failed)")
                time.sleep(self.reconnect.wait_s(failures))
                failures += 1
                try:
                    capture = self._open()
                    self.reconnections += 1
                except SourceError:
                    capture = None  # the next attempt follows
        finally:
            if capture is not None:
                capture.release()
