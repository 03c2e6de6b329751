"""Live cameras and network streams as sources, read with OpenCV, reconnected without end."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from pipeline.errors import SourceError
from pipeline.sources.base import Frame, Gap, Source


def redact_url(address: str) -> str:
    """``address`` without secrets, for names, messages and the store: a password becomes ``***``
    and a query string (tokens) ``?***``. Addresses that are not URLs are returned as they are."""
    parts = urlsplit(address)
    if not parts.scheme or not parts.netloc:
        return address
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else f"{user}@{host}"
    path = parts.path.split(";", 1)[0] + ";***" if ";" in parts.path else parts.path  # ;token=... path parameters
    return urlunsplit((parts.scheme, netloc, path, "***" if parts.query else "", ""))


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
    max_backoff_s: float = 10.0
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
        self.address = address  # what is opened; ``describe()`` (names, messages, the store) has no secrets
        self.device = device  # a camera index: ``address`` is then how the user named it (camera:1)
        parts = urlsplit(address)
        try:
            port = f"_{parts.port}" if parts.port else ""
        except ValueError:
            raise SourceError(f"{redact_url(address)}: not a valid address (port)") from None
        named = f"{parts.scheme}_{parts.hostname}{port}{parts.path.split(';', 1)[0]}" if parts.netloc else address
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", named.split("?", 1)[0]).strip("_")  # no user, password, token
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
        return redact_url(self.address)

    def _open(self):
        import cv2

        target: int | str = self.device if self.device is not None else self.address
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.reconnect.stall_timeout_s * 1000)]
        capture = cv2.VideoCapture(target, cv2.CAP_ANY, params)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.describe()}: camera is unreachable or cannot be opened")
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
                if self._gap is None:  # down when the run started: a gap from the first failed try to the first frame
                    self._gap = (time.time(), "disconnect")
                failures += 1
                wait = policy.wait_s(failures - 1)
                if deadline is not None and time.monotonic() + wait > deadline:
                    if not policy.connect_timeout_s:
                        raise
                    raise SourceError(f"{error} (retried for {policy.connect_timeout_s:g} s)") from None
                if policy.gives_up(failures - 1):
                    if failures == 1:
                        raise
                    raise SourceError(f"{error} ({failures - 1} reconnection attempts failed)") from None
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
                    raise SourceError(f"{self.describe()}: camera stopped sending frames after frame {index}"
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
