"""Loopback servers for tests: a folder served over HTTP, and an MJPEG camera playing a video in real time."""

from __future__ import annotations

import functools
import http.server
import os
import signal
import subprocess
import threading
from pathlib import Path

from pipeline.sources.camera_server import spawn

REPO = Path(__file__).resolve().parents[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a camera client that stops reading (max_frames) breaks the pipe: expected


def serve_folder(folder: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """Serve ``folder`` on 127.0.0.1:``port`` (0: any free port) from a daemon thread; stop it with
    ``server.shutdown()``."""
    server = _QuietServer(("127.0.0.1", port), functools.partial(_QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class LoopbackCamera:
    """``pipeline.sources.camera_server`` in a process of its own on 127.0.0.1: an MJPEG camera
    playing ``video`` in real time. ``stop()`` kills it by its PID; ``start()`` brings it back on
    the same port."""

    def __init__(self, video: Path, fps: float, *options: str) -> None:
        self.video, self.fps, self.options = video, fps, options
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process, url = spawn(self.video, self.fps, self.port, *self.options)
        self.port = int(url.rsplit(":", 1)[1].strip("/"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
