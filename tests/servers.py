"""Loopback servers for tests: a folder served over HTTP stands in for an IP camera."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path


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
