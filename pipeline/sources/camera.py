"""Live cameras and network streams as sources, read with OpenCV, reconnected without end.

A camera's password or token is never written by this project (names, messages, the store, logs):
:func:`redact_url` masks it, :func:`camera_credentials` finds a user and password outside the URL
(a netrc file, environment variables), and :func:`quiet_camera_logs` keeps OpenCV and FFmpeg from
printing the URL they were given. See docs/live.md, "Camera credentials".
"""

from __future__ import annotations

import netrc
import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from ..errors import SourceError, error_reason
from .base import Frame, Gap, LiveStatus, Source
from .network import DEFAULT_DECODING, DecodeSize, Decoding, NetworkCapture, StreamInfo

LOGIN_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "rtmps")  # URLs whose user:password FFmpeg sends
USER_VARIABLE, PASSWORD_VARIABLE = "ANOMSTREAM_CAMERA_USER", "ANOMSTREAM_CAMERA_PASSWORD"
CLOCK_TOLERANCE_S = 5.0  # a camera clock further behind ours than this is not trusted (frames stamped on arrival)


def redact_url(address: str) -> str:
    """``address`` without secrets, for names, messages and the store: a password becomes ``***``
    and a query string (tokens) ``?***``. Addresses that are not URLs are returned as they are."""
    scheme, slashes, rest = address.partition("://")
    before_query = rest.split("?", 1)[0].split("#", 1)[0]
    if slashes and "@" in before_query and "/" in before_query[:before_query.rfind("@")]:
        address = f"{scheme}://***:***@{rest[before_query.rfind('@') + 1:]}"  # a password holding an unencoded '/'
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
class Credentials:
    """The user and password a camera is opened with; ``origin`` says where they came from (for
    messages: ``the URL``, a netrc file's path, or ``ANOMSTREAM_CAMERA_PASSWORD``). Its repr leaves
    the password out."""

    user: str
    password: str = field(repr=False)
    origin: str = ""


def camera_credentials(address: str) -> Credentials | None:
    """The user and password for a camera URL (rtsp, rtsps, http, https, rtmp, rtmps); the first of:

    1. the URL's own ``user:password@`` (masked wherever it is written, but a command line is
       visible to every user of the machine in ``ps``);
    2. the netrc file (``$NETRC``, else ``~/.netrc``, read with :mod:`netrc`): the entry of the
       URL's host (``machine HOST``, else ``default``), its login and password;
    3. the environment: ``ANOMSTREAM_CAMERA_PASSWORD`` with ``ANOMSTREAM_CAMERA_USER``.

    A user in the URL (``rtsp://admin@cam/``) wins over the login of 2 and 3. None for other
    addresses (devices, udp://, ...) and when nothing matched. Raises SourceError naming the camera
    and the netrc file: ``$NETRC`` names no file, the file cannot be read or parsed, or the entry
    has a password and the file is readable by other users."""
    parts = urlsplit(address)
    if parts.scheme.lower() not in LOGIN_SCHEMES or not parts.hostname:
        return None
    user = unquote(parts.username) if parts.username else None
    if parts.password is not None:
        return Credentials(user or "", unquote(parts.password), "the URL")
    entry = _netrc_entry(parts.hostname, redact_url(address))
    if entry is not None:
        login, password, path = entry
        return Credentials(user or login, password, path)
    if os.environ.get(PASSWORD_VARIABLE):
        return Credentials(user or os.environ.get(USER_VARIABLE, ""), os.environ[PASSWORD_VARIABLE], PASSWORD_VARIABLE)
    return None


def _netrc_entry(host: str, camera: str) -> tuple[str, str, str] | None:
    """(login, password, file) of the netrc file's entry for ``host``; None without file or entry."""
    named = os.environ.get("NETRC")
    path = Path(os.path.expanduser(named or "~/.netrc"))  # no home folder: "~/.netrc", no such file
    if not path.is_file():
        if named:
            raise SourceError(f"{camera}: NETRC names {path}: no such file")
        return None
    try:
        found = netrc.netrc(str(path)).authenticators(host)
    except netrc.NetrcParseError:  # its message (and line, often the next one) may quote a password
        raise SourceError(f"{camera}: {path}: not a valid netrc file (machine HOST login USER password PASSWORD)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"{camera}: {path}: cannot be read ({error_reason(error)})") from None
    if found is None or not found[2]:
        return None
    if path.stat().st_mode & 0o077:
        raise SourceError(f"{camera}: {path}: readable by other users, so its passwords are not used (chmod 600 it)")
    return found[0] or "", found[2], str(path)


def url_with_credentials(address: str, credentials: Credentials | None) -> str:
    """What FFmpeg opens: ``address`` with ``credentials`` as its percent-encoded ``user:password@``
    (FFmpeg decodes them), or as it is when it carries a password itself or there are none."""
    parts = urlsplit(address)
    if credentials is None or parts.password is not None:
        return address
    host = parts.netloc.rsplit("@", 1)[-1]
    login = f"{quote(credentials.user, safe='')}:{quote(credentials.password, safe='')}@"
    return urlunsplit(parts._replace(netloc=login + host))


def scrub(text: str, address: str, credentials: Credentials | None) -> str:
    """``text`` (a library's message, which may repeat the URL it was given) with the camera's
    ``address`` (also with ``credentials`` in it), password, query string and path parameters masked."""
    for secret in (url_with_credentials(address, credentials), address):
        text = text.replace(secret, redact_url(address))
    parts = urlsplit(address)
    secrets = [parts.query, parts.path.partition(";")[2]]
    if credentials is not None:
        secrets += [credentials.password, quote(credentials.password, safe="")]
    for secret in filter(None, secrets):
        text = text.replace(secret, "***")
    return text


def refusal_text(shown: str, credentials: Credentials | None, unauthorized: bool) -> str:
    """One line on a camera (``shown``: its address without secrets) refusing ``credentials``
    (401 when ``unauthorized``, else 403): where they came from, never the password."""
    status = "401 Unauthorized" if unauthorized else "403 Forbidden"
    if credentials is None:
        return (f"{shown}: camera asks for a user and password ({status}); none found in the URL, "
                f"the netrc file ($NETRC or ~/.netrc) or {USER_VARIABLE}/{PASSWORD_VARIABLE}")
    user = f"user {credentials.user!r}" if credentials.user else "an empty user"
    return f"{shown}: camera refused {user} with the password from {credentials.origin} ({status})"


def quiet_camera_logs() -> None:
    """Keep the libraries of this process from printing a camera's URL (with its credentials) to
    stdout or stderr, where Ray writes every worker's output to its log files: FFmpeg's log off in
    OpenCV (``OPENCV_FFMPEG_LOGLEVEL``, read when OpenCV first uses FFmpeg: its debug lines name the
    URL), OpenCV's own log at errors at most (its info and debug lines name the URL; its warnings
    repeat what the one-line errors say), PyAV's log (off unless set) at warnings at most."""
    os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "-8"
    import av.logging
    import cv2

    if cv2.utils.logging.getLogLevel() > cv2.utils.logging.LOG_LEVEL_ERROR:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    level = av.logging.get_level()
    if level is not None and level > av.logging.WARNING:
        av.logging.set_level(av.logging.WARNING)


@dataclass(frozen=True)
class Reconnect:
    """How a camera is (re)connected.

    ``attempts``: failed attempts in a row before the stream fails for good (None: never);
    waits grow from ``backoff_s`` doubling up to ``max_backoff_s``, each with jitter (half the wait
    plus a random share of the other half), so many clients of one camera do not retry in step.
    ``stall_timeout_s``: no frame for this long reconnects and records a gap of kind ``stall``.
    ``connect_timeout_s``: the first connection is retried this long (None: as long as
    ``attempts`` allows; 0: one try).
    ``auth_retries``: a camera that refuses the credentials is tried again this many times,
    ``auth_backoff_s`` apart (cameras lock an account after a few wrong logins), then given up
    (the first connection: only within ``connect_timeout_s``).
    """

    attempts: int | None = None
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    stall_timeout_s: float = 10.0
    connect_timeout_s: float | None = 0.0
    auth_retries: int = 2
    auth_backoff_s: float = 60.0

    def wait_s(self, failures: int) -> float:
        """Seconds to wait before attempt ``failures + 1``."""
        wait = min(self.max_backoff_s, self.backoff_s * 2 ** min(failures, 30))
        return wait / 2 + random.uniform(0, wait / 2)

    def gives_up(self, failures: int) -> bool:
        return self.attempts is not None and failures >= self.attempts


class CameraRefused(SourceError):
    """The camera refused the credentials (HTTP or RTSP 401/403); the message names the camera,
    the user and where the password came from, never the password."""


class _OpenCvCapture:
    """A camera opened with OpenCV (devices, http(s) and other FFmpeg URLs), read as
    :class:`~pipeline.sources.network.NetworkCapture` is: ``read()`` RGB or None, ``failure``."""

    info = None

    def __init__(self, capture, read_timeout_s: float) -> None:
        self.capture, self.read_timeout_s, self.failure = capture, read_timeout_s, None

    captured = least_lag = None  # OpenCV does not say when the camera took a picture: frames are stamped on arrival

    def read(self):
        import cv2

        started = time.monotonic()
        ok, image = self.capture.read()
        if ok:
            return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        self.failure = "stall" if time.monotonic() - started >= 0.9 * self.read_timeout_s else "disconnect"
        return None

    def release(self) -> None:
        self.capture.release()


def _readable_name(address: str) -> str:
    """A camera's stream name from its address: scheme, host, port and path, no user, password or
    token (``rtsp_cam.local_554_live``). Raises SourceError for a port that is not a number."""
    parts = urlsplit(address)
    try:
        port = f"_{parts.port}" if parts.port else ""
    except ValueError:
        raise SourceError(f"{redact_url(address)}: not a valid address (port)") from None
    named = f"{parts.scheme}_{parts.hostname}{port}{parts.path.split(';', 1)[0]}" if parts.netloc else address
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", named.split("?", 1)[0]).strip("_") or "camera"


class FrameClock:
    """What a camera's frames are stamped with: ``kind`` ``camera`` (its own clock, RTCP) or
    ``arrival``; ``last``: the newest stamp (0: none yet)."""

    def __init__(self) -> None:
        self.kind, self.last = "arrival", 0.0

    def stamp(self, captured: float | None, least_lag: float | None, now: float) -> float:
        """A frame's timestamp: when the camera took it by its own clock (RTSP with RTCP sender
        reports), where that clock agrees with ours: the connection's least lag (arrival - capture,
        the frame that waited least: the clocks' offset and the shortest way) is between -50 ms and
        CLOCK_TOLERANCE_S, so a frame late for our own reasons keeps its lateness; else its arrival.
        Always after the previous frame's, never after its arrival."""
        camera = captured is not None and least_lag is not None and -0.05 <= least_lag <= CLOCK_TOLERANCE_S
        self.kind = "camera" if camera else "arrival"
        self.last = max(min(captured, now) if camera else now, self.last + 1e-6)
        return self.last


class CameraSource(Source):
    """A live camera: a device (index or /dev/videoN), rtsp://, http(s):// or another FFmpeg URL.
    RTSP is read with PyAV and explicit options (:mod:`pipeline.sources.network`: ``decoding``'s
    transport and threads, no buffering, a read timeout of half the stall timeout; decoded to the
    size frames are used at when asked: :meth:`use_size`), the rest with OpenCV. Never ends
    by itself.

    When the camera stops sending frames (closed, failed, or silent for the stall timeout) it is
    reopened with backoff (:class:`Reconnect`); frame indices continue across reconnections and a
    :class:`~pipeline.sources.base.Gap` from the last frame before to the first frame after is
    yielded between them. :meth:`live_status` says where the camera stands at any moment, from
    another thread (a hang shows as ``stalled`` once no frame came for the stall timeout, while the
    read is still waiting). Raises SourceError (one line, naming the address) when the first
    connection or the reconnections are given up; :class:`CameraRefused` when the camera refused
    its credentials ``auth_retries + 1`` times.

    ``credentials`` (:func:`camera_credentials`, looked up when the source is made) travel with
    the source to its decoder; the URL with them is made only to be opened. ``describe()``, the
    repr, the stream id and every message leave the password and query string out.
    """

    is_live = True
    live_policy = "latest"

    def __init__(self, address: str, stream_id: str | None = None, max_frames: int | None = None,
                 open_timeout_s: float = 10.0, reconnect: Reconnect | None = None, device: int | None = None,
                 decoding: Decoding = DEFAULT_DECODING) -> None:
        self.address = address  # what is opened; ``describe()`` (names, messages, the store) has no secrets
        self.device = device  # a camera index: ``address`` is then how the user named it (camera:1)
        self.stream_id = stream_id or _readable_name(address)
        self.max_frames = max_frames
        self.frame_count = max_frames
        self.open_timeout_s = open_timeout_s
        self.reconnect = reconnect or Reconnect()
        self.decoding = decoding
        self.decode_size: DecodeSize | None = None  # what frames are used at (use_size), when scaled in the decoder
        self.reconnections = 0
        self.warnings = []
        self.info: StreamInfo | None = None  # what the camera sends, once connected (RTSP)
        self.decoded: tuple[int, int] | None = None  # (width, height) its frames are decoded to (None: as sent)
        self.clock = FrameClock()  # what its frames are stamped with
        self._gap: tuple[float, str] | None = None  # (last frame's time, kind) while the camera is down
        self._status = LiveStatus("connecting", time.time())
        self.credentials = None if device is not None else camera_credentials(address)

    def __repr__(self) -> str:
        return f"CameraSource({self.describe()!r}, stream_id={self.stream_id!r})"

    def open_gap(self, now: float) -> Gap | None:
        return Gap(self._gap[0], now, self._gap[1]) if self._gap is not None else None

    def describe(self) -> str:
        return redact_url(self.address)

    def live_status(self, now: float, held: bool = False) -> LiveStatus:
        """The reader's state, ``live`` read as ``stalled`` once the newest frame is older than the
        stall timeout (the read may still be waiting: a hung camera is seen without it), unless the
        reader is ``held`` by the scorer (nothing is read: the age is the scorer's, not the camera's)."""
        status = replace(self._status, info=self.stream_info())
        stall_s = self.reconnect.stall_timeout_s
        if held and status.state == "live":
            return replace(status, reason="reading held: the replicas are behind (policy every)")
        if status.state == "live" and status.last_frame is not None and now - status.last_frame >= stall_s:
            return replace(status, state="stalled", since=status.last_frame + stall_s,
                           reason=f"no frame for {stall_s:g} s")
        return status

    def stream_info(self) -> dict[str, str | int | float | None] | None:
        """What the camera sends, ``clock``: what frames are stamped with (``camera``: its own
        clock through RTCP, else ``arrival``), ``decoded``: the size frames are decoded to
        (``WxH``; None: as sent), ``decoder_threads``."""
        if self.info is None:
            return None
        decoded = f"{self.decoded[0]}x{self.decoded[1]}" if self.decoded else None
        return {**self.info.to_dict(), "clock": self.clock.kind, "decoded": decoded, "decoder_threads": self.decoding.threads}

    def use_size(self, model: int, picture: int = 0) -> None:
        if self.decoding.scale_in_decoder:
            self.decode_size = DecodeSize(model, picture)

    def _set_status(self, state: str, reason: str | None = None, last_frame: float | None = None) -> None:
        old = self._status
        if state != old.state or reason != old.reason or last_frame is not None:
            self._status = LiveStatus(state, time.time() if state != old.state else old.since,
                                      last_frame if last_frame is not None else old.last_frame, reason)

    def scrub(self, text: str) -> str:
        """``text`` (a library's message, which may repeat the URL it was given) with this camera's
        address, password, query string and path parameters masked."""
        return scrub(text, self.address, self.credentials)

    def _open(self, first: bool):
        """A capture of the camera. SourceError (one line) when it cannot be opened, CameraRefused
        when it refused the credentials (``first``: also asked of an OpenCV-opened camera)."""
        quiet_camera_logs()
        scheme = urlsplit(self.address).scheme.lower()
        if self.device is None and scheme in ("rtsp", "rtsps"):
            return self._open_network()
        import cv2

        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.reconnect.stall_timeout_s * 1000)]
        if self.device is not None or not urlsplit(self.address).netloc:  # camera:N, /dev/videoN
            target, backend = (self.device if self.device is not None else self.address), cv2.CAP_ANY
        else:  # FFmpeg only: the other backends would print the URL when they fail (OpenCV's image sequences)
            target, backend = url_with_credentials(self.address, self.credentials), cv2.CAP_FFMPEG
        try:
            capture = cv2.VideoCapture(target, backend, params)
        except cv2.error:
            capture = None
        if capture is None or not capture.isOpened():
            if capture is not None:
                capture.release()
            refusal = self.refusal() if first else None
            if refusal is not None:
                raise CameraRefused(refusal)
            raise SourceError(f"{self.describe()}: camera is unreachable or cannot be opened")
        return _OpenCvCapture(capture, self.reconnect.stall_timeout_s)

    def _open_network(self) -> NetworkCapture:
        import av

        try:
            capture = NetworkCapture(url_with_credentials(self.address, self.credentials), self.open_timeout_s,
                                     self.reconnect.stall_timeout_s / 2, self.decoding, self.decode_size)
        except (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError) as error:
            raise CameraRefused(self._refusal_text(isinstance(error, av.error.HTTPUnauthorizedError))) from None
        except Exception as error:  # noqa: BLE001 - unreachable, refused, not a video: FFmpeg's strerror, not its URL
            cause = self.scrub(str(getattr(error, "strerror", None) or error))
            raise SourceError(f"{self.describe()}: camera is unreachable or cannot be opened ({cause})") from None
        self.info, self.decoded = capture.info, capture.output
        return capture

    def refusal(self) -> str | None:
        """Why the camera cannot be opened when it is a refusal of its credentials (HTTP or RTSP
        401/403, asked of FFmpeg through PyAV, the URL left out): one line naming the camera; None
        when it is something else (unreachable, not a video, ...)."""
        if self.device is not None or urlsplit(self.address).scheme.lower() not in LOGIN_SCHEMES:
            return None
        import av

        quiet_camera_logs()
        try:
            with av.logging.Capture():
                av.open(url_with_credentials(self.address, self.credentials), timeout=self.open_timeout_s).close()
        except (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError) as error:
            return self._refusal_text(isinstance(error, av.error.HTTPUnauthorizedError))
        except Exception:  # noqa: BLE001 - anything else: not a refusal
            return None
        return None

    def _refusal_text(self, unauthorized: bool) -> str:
        return refusal_text(self.describe(), self.credentials, unauthorized)

    def _refused(self, refusal: CameraRefused, refusals: int, deadline: float | None) -> float:
        """After the camera's ``refusals``-th refusal: the seconds to wait before trying again, or
        the refusal raised (tried ``auth_retries + 1`` times, or the wait would pass ``deadline``)."""
        policy = self.reconnect
        self._set_status("auth_failed", str(refusal))
        if refusals > policy.auth_retries or (deadline is not None and time.monotonic() + policy.auth_backoff_s > deadline):
            tries = f" ({refusals} tries, {policy.auth_backoff_s:g} s apart)" if refusals > 1 else ""
            raise CameraRefused(f"{refusal}{tries}") from None
        return policy.auth_backoff_s

    def _connect(self):
        """The first connection, retried until ``connect_timeout_s`` has passed or ``attempts`` failed."""
        policy = self.reconnect
        deadline = None if policy.connect_timeout_s is None else time.monotonic() + policy.connect_timeout_s
        failures = refusals = 0
        while True:
            try:
                return self._open(first=failures == 0)
            except CameraRefused as refusal:
                refusals += 1
                wait = self._refused(refusal, refusals, deadline)
            except SourceError as error:
                self._set_status("connecting" if failures == 0 else "down", str(error))
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
        try:
            yield from self._frames()
        except SourceError as error:
            if self._status.state != "auth_failed":
                self._set_status("stopped", str(error))
            raise
        except Exception as error:  # a library's error may repeat the URL (and its password) it was given
            reason = f"{self.describe()}: decoding failed ({self.scrub(error_reason(error))})"
            self._set_status("stopped", reason)
            raise SourceError(reason) from None
        else:
            self._set_status("stopped")

    def _frames(self) -> Iterator[Frame | Gap]:
        capture = self._connect()
        index = 0
        failures = refusals = 0  # reconnection attempts since the last frame; refusals among them
        last_frame = time.time()
        try:
            while self.max_frames is None or index < self.max_frames:
                image = capture.read() if capture is not None else None
                if image is not None:
                    now = time.time()
                    taken = self.clock.stamp(capture.captured, capture.least_lag, now)
                    if self._gap is not None:
                        gap, self._gap = self.open_gap(taken), None
                        yield gap
                    failures = refusals = 0
                    self._set_status("live", last_frame=now)
                    yield Frame(self.stream_id, index, taken, image)
                    index, last_frame = index + 1, now
                    continue
                if self._gap is None:
                    # from the last frame's own timestamp (the camera's clock, or its arrival)
                    self._gap = (self.clock.last or last_frame, capture.failure if capture is not None else "disconnect")
                    stalled = self._gap[1] == "stall"
                    self._set_status("stalled" if stalled else "down",
                                     f"no frame for {time.time() - last_frame:.1f} s" if stalled else "connection lost")
                if capture is not None:
                    capture.release()
                if self.reconnect.gives_up(failures):
                    raise SourceError(f"{self.describe()}: camera stopped sending frames after frame {index}"
                                      f" ({failures} reconnection attempts failed)")
                time.sleep(self.reconnect.wait_s(failures) if not refusals else self.reconnect.auth_backoff_s)
                failures += 1
                capture = None
                try:
                    capture = self._open(first=False)
                    self.reconnections += 1
                except CameraRefused as refusal:  # the password changed while the run went on
                    refusals += 1
                    self._refused(refusal, refusals, None)
                except SourceError as error:
                    self._set_status("down", str(error))
        finally:
            if capture is not None:
                capture.release()
