"""A loopback IP camera for tests, demos and the live benchmark: a video played in real time as
MJPEG over HTTP (``multipart/x-mixed-replace``, what many IP cameras serve), looping.

``python -m anomstream.pipeline.sources.camera_server VIDEO [--port 0] [--fps F] [--stall-after S]
[--freeze-after S] [--auth-env NAME]`` prints ``serving http://127.0.0.1:PORT/`` once it listens.
Like a real camera it sends each client the newest frame: a client that reads slowly misses frames.
``--stall-after``: S seconds after the first client connected, connections stay open (and new
ones are accepted) but no frame is sent any more; ``--freeze-after``: S seconds after the first
client connected, the same image is sent again and again. ``--auth-env NAME``: like a camera with a
password, it answers 401 to a request without HTTP Basic auth for the ``user:password`` held in
the environment variable NAME (never on its command line, where ``ps`` would show it).
"""

from __future__ import annotations

import argparse
import base64
import hmac
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2

BOUNDARY = "anomstreamframe"
AUTH_VARIABLE = "ANOMSTREAM_CAMERA_SERVER_AUTH"  # what spawn(credentials=...) hands the server its user:password in


class _Clock:
    """Decodes the video at its frame rate on a thread; clients wait for the next JPEG."""

    def __init__(self, video: str, fps: float | None, stall_after_s: float | None, freeze_after_s: float | None) -> None:
        capture = cv2.VideoCapture(video)
        if not capture.isOpened():
            raise SystemExit(f"error: {video}: cannot be opened")
        self.capture, self.fps = capture, fps or capture.get(cv2.CAP_PROP_FPS) or 25.0
        self.stall_after_s, self.freeze_after_s = stall_after_s, freeze_after_s
        self.jpeg, self.sequence = b"", 0
        self.first_client: float | None = None  # time.monotonic() of the first connection
        self.changed = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _next_image(self):
        ok, image = self.capture.read()
        if not ok:  # loop the video
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self.capture.read()
        return image

    def _run(self) -> None:
        started = time.monotonic()
        jpeg = b""
        while True:
            elapsed = 0.0 if self.first_client is None else time.monotonic() - self.first_client
            if self.stall_after_s is None or elapsed < self.stall_after_s:
                if self.freeze_after_s is None or elapsed < self.freeze_after_s or not jpeg:
                    jpeg = cv2.imencode(".jpg", self._next_image(), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                with self.changed:
                    self.jpeg, self.sequence = jpeg, self.sequence + 1
                    self.changed.notify_all()
            else:
                time.sleep(1 / self.fps)  # stalled: nothing to send
            time.sleep(max(0.0, started + (self.sequence + 1) / self.fps - time.monotonic()))

    def connect(self) -> int:
        """A client connects: the sequence number of the frame it has seen (the current one)."""
        with self.changed:
            if self.first_client is None:
                self.first_client = time.monotonic()
            return self.sequence

    def wait_next(self, seen: int) -> tuple[int, bytes]:
        with self.changed:
            self.changed.wait_for(lambda: self.sequence > seen)
            return self.sequence, self.jpeg


def _handler(clock: _Clock, credentials: str | None = None) -> type[http.server.BaseHTTPRequestHandler]:
    expected = None if credentials is None else ("Basic " + base64.b64encode(credentials.encode()).decode()).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            given = self.headers.get("Authorization", "").encode()
            if expected is not None and not hmac.compare_digest(given, expected):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            seen = clock.connect()
            try:
                while True:
                    seen, jpeg = clock.wait_next(seen)
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                                     .encode() + jpeg + b"\r\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args) -> None:
            pass

    return Handler


def spawn(video: str | Path, fps: float, port: int = 0, *options: str,
          credentials: str | None = None) -> tuple[subprocess.Popen, str]:
    """This server in a process of its own on 127.0.0.1 (``port`` 0: any free one), once it
    listens: (the process, to stop by its PID; the camera's URL). ``options``: ``--stall-after S``...
    ``credentials``: ``user:password`` it requires (HTTP Basic), handed over in its environment."""
    command = [sys.executable, "-m", "anomstream.pipeline.sources.camera_server", str(video), "--port", str(port),
               "--fps", str(fps)]
    environment = None
    if credentials is not None:
        options, environment = (*options, "--auth-env", AUTH_VARIABLE), {**os.environ, AUTH_VARIABLE: credentials}
    process = subprocess.Popen([*command, *options], stdout=subprocess.PIPE, text=True, env=environment)
    line = process.stdout.readline()
    if not line.startswith("serving http://127.0.0.1:"):
        process.kill()
        raise RuntimeError(f"loopback camera did not start: {line.strip() or 'no output'}")
    return process, line.split()[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--fps", type=float, help="default: the video's frame rate")
    parser.add_argument("--stall-after", type=float, metavar="SECONDS")
    parser.add_argument("--freeze-after", type=float, metavar="SECONDS")
    parser.add_argument("--auth-env", metavar="NAME",
                        help="require HTTP Basic auth with the user:password held in this environment variable")
    args = parser.parse_args(argv)
    credentials = None
    if args.auth_env is not None:
        credentials = os.environ.get(args.auth_env)
        if not credentials or ":" not in credentials:
            parser.error(f"--auth-env {args.auth_env}: the variable must hold user:password")
    os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "-8"  # its stdout says "serving ..." first, whatever the environment
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    clock = _Clock(args.video, args.fps, args.stall_after, args.freeze_after)
    server = http.server.ThreadingHTTPServer((args.host, args.port), _handler(clock, credentials))
    server.daemon_threads = True
    print(f"serving http://{args.host}:{server.server_address[1]}/", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
