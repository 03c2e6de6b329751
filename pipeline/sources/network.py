"""A network camera read with PyAV (FFmpeg) and explicit options, so that a hang ends in a bounded
time and no frame waits in a buffer: what :class:`~pipeline.sources.camera.CameraSource` opens for
``rtsp://`` and ``rtsps://`` URLs.

- transport: RTSP over TCP by default (``udp`` loses packets on a busy network and shows grey
  smears; some cameras only do one of the two);
- ``fflags=nobuffer``, a short stream analysis (``analyzeduration`` 1 s) and the decoder's
  ``low_delay`` flag: the first frame comes without a burst of buffered ones;
- one decoder thread by default (``Decoding.threads``): FFmpeg's frame threads each hold a frame back (one
  thread per core: a frame of delay each); more threads are slice threads, which add no delay but
  help only streams encoded in slices;
- on request (``live --scale-in-decoder``), decoding straight to the size the frames are used at
  (:class:`DecodeSize`: the model's input, or the live view's picture): FFmpeg's scaler makes the
  small RGB picture from the decoded YUV one instead of a full-size RGB picture scaled afterwards
  (a 1080p H.264 clip, one core: 5.2 ms a frame instead of 8.4). Not the default: FFmpeg's area
  scaling is not OpenCV's, which the calibration's footage went through, and the shipped Ped2
  model's raw score on vtest.avi moves up by 2 % (a sixth of its normal spread);
- timeouts through FFmpeg's interrupt callback (PyAV ``timeout=(open, read)``): a read that gets no
  data for ``read_timeout_s`` raises, even with the TCP connection still open (a hung camera).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

DEFAULT_TRANSPORT = "tcp"
TRANSPORTS = ("tcp", "udp")


@dataclass(frozen=True)
class DecodeSize:
    """The size frames are used at: ``model`` (the model's square input side, pixels) and
    ``picture`` (the longer side of the live view's picture; 0: no view). Frames are only ever
    scaled down, with FFmpeg's area filter (close to ``cv2.INTER_AREA``, not the same: on
    vtest.avi 0.75 grey levels apart on average, up to 15 at colour edges)."""

    model: int
    picture: int = 0

    def output(self, width: int, height: int) -> tuple[int, int] | None:
        """(width, height) to decode a ``width`` x ``height`` stream to; None: as sent."""
        if not self.picture:
            return (self.model, self.model) if width > self.model and height > self.model else None
        longer = max(width, height)
        if longer <= self.picture:
            return None
        scaled = (round(width * self.picture / longer), round(height * self.picture / longer))
        return scaled if min(scaled) >= self.model else None


@dataclass(frozen=True)
class Decoding:
    """How a network camera is read: RTSP ``transport`` (``tcp``/``udp``), the decoder's ``threads``
    (slice threads), ``scale_in_decoder`` (decode straight to the size frames are used at)."""

    transport: str = DEFAULT_TRANSPORT
    threads: int = 1
    scale_in_decoder: bool = False


DEFAULT_DECODING = Decoding()


@dataclass(frozen=True)
class StreamInfo:
    """What the camera sends: ``codec`` (FFmpeg's name), ``width`` x ``height`` pixels, ``fps`` (the
    stream's nominal rate; None when it does not say), ``transport``."""

    codec: str
    width: int
    height: int
    fps: float | None
    transport: str

    def to_dict(self) -> dict[str, str | int | float | None]:
        return {"codec": self.codec, "width": self.width, "height": self.height, "fps": self.fps,
                "transport": self.transport}


class NetworkCapture:
    """One connection to a network camera. :meth:`read` gives the next decoded picture as RGB (at
    ``size``'s output for the stream when given, else as sent), or
    None once the connection is over (closed, failed, or no data for ``read_timeout_s``; ``failure``
    then says why: ``stall`` when nothing came for the read timeout, else ``disconnect``).

    Opening raises the library's error (PyAV's ``av.error.*``: HTTPUnauthorizedError for a refused
    login, ...); its message may hold the URL, which the caller masks."""

    def __init__(self, url: str, open_timeout_s: float, read_timeout_s: float, decoding: Decoding = DEFAULT_DECODING,
                 size: DecodeSize | None = None) -> None:
        import av

        options = {"fflags": "nobuffer", "analyzeduration": "1000000"}
        if url.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = decoding.transport
        self.read_timeout_s = read_timeout_s
        self.container = av.open(url, options=options, timeout=(open_timeout_s, read_timeout_s))
        try:
            stream = self.container.streams.video[0]
        except IndexError:
            self.container.close()
            raise ValueError("no video stream") from None
        stream.thread_type = "SLICE"
        stream.codec_context.thread_count = decoding.threads
        # the decoder's own low-delay flag (the container option above is the demuxer's)
        stream.codec_context.flags |= av.codec.context.Flags.low_delay
        rate = stream.average_rate or stream.guessed_rate
        self.info = StreamInfo(stream.codec_context.name, stream.codec_context.width, stream.codec_context.height,
                               round(float(rate), 3) if rate else None, decoding.transport)
        self.output = size.output(self.info.width, self.info.height) if size is not None else None
        self._frames = self.container.decode(stream)
        self._time_base = stream.time_base
        self.failure: str | None = None
        self.captured: float | None = None  # the last picture's capture time on the camera's clock (RTCP)
        self.least_lag: float | None = None  # the smallest arrival - captured of this connection (seconds)
        self._stamp: float | None = None  # the last picture's timestamp in the stream (seconds)

    def read(self) -> np.ndarray | None:
        """The next picture, uint8 (H, W, 3) RGB; None when the connection is over (see ``failure``)."""
        started = time.monotonic()
        try:
            frame = next(self._frames)
        except Exception:  # noqa: BLE001 - the end of this connection, whatever FFmpeg says (EOF, timeout, reset)
            silent = time.monotonic() - started >= 0.9 * self.read_timeout_s
            self.failure = "stall" if silent else "disconnect"
            return None
        stamp = float(frame.pts * self._time_base) if frame.pts is not None else None
        if self._held_back(time.monotonic() - started, stamp):
            self.failure = "stall"
            return None
        self.captured, self._stamp = self._camera_time(frame.pts), stamp
        if self.captured is not None:
            lag = time.time() - self.captured
            self.least_lag = lag if self.least_lag is None else min(self.least_lag, lag)
        if self.output is None:
            return frame.to_ndarray(format="rgb24")
        return frame.to_ndarray(format="rgb24", width=self.output[0], height=self.output[1], interpolation="AREA")

    def _held_back(self, waited_s: float, stamp: float | None) -> bool:
        """Whether a picture that came after ``waited_s`` of silence is one the decoder held back
        and gave out when the demuxer's read timed out (a hung camera: it came a read timeout
        after the last one, and the next read timed out again, so the camera was seen ``stalled``
        after twice the read timeout, as if it had sent a frame). Told by the stream's own
        timestamps (``stamp``, seconds; no clock of this machine's): it was taken a frame or so
        after the last picture, not about ``waited_s`` later as a picture sent after a silence is.
        Such a picture ends the connection as a stall."""
        if stamp is None or self._stamp is None or waited_s < 0.9 * self.read_timeout_s:
            return False
        return stamp - self._stamp < waited_s / 2

    def _camera_time(self, pts: int | None) -> float | None:
        """When the camera took a picture of timestamp ``pts``, by its own clock (seconds since the
        epoch): FFmpeg's RTSP reader maps RTP time to wall time through the camera's RTCP sender
        reports (``start_time_realtime``: the wall time of pts 0); None before the first report
        and for cameras that send none."""
        start = self.container.start_time_realtime
        if pts is None or not start or start <= 0:
            return None
        return start / 1e6 + float(pts * self._time_base)

    def release(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - closing a connection that already failed
            pass
