"""The live view: a web page served while ``anomstream live --view PORT`` runs (FastAPI + uvicorn,
on a thread of the driver). Each stream's latest scored frame with its anomaly map, the score trace
of the last minute, frame rate, latency and frame counts; the page polls two JSON/JPEG endpoints.

Endpoints: ``/`` (the page), ``/api/streams`` (JSON), ``/api/streams/{n}/frame.jpg`` (the n-th
stream's shown frame: the camera's picture, at most VIEW_PICTURE_SIZE px, or the model's input with
its map; 404 before its first scored frame), ``/api/streams/{n}/map.png`` (its map, translucent, to
lay over the camera's picture; 404 when the frame is the model's input); both take ``?t=`` (a
``frame_time`` the JSON gave) and answer that frame's picture while it is among the stream's last
RECENT_FRAMES shown ones, 404 after, so a picture and its map always belong together; ``/api/events/{id}.jpg``
(an ended event's snapshot, from the run's events folder), ``/metrics`` (Prometheus text format:
:mod:`pipeline.view.metrics`), ``/healthz`` (JSON: the run is up, each camera's state). Without the
page (``--metrics PORT`` and no ``--view``) only the last two. Beyond loopback every request needs
the run's token (:mod:`pipeline.view.access`).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import AnomstreamError
from .access import COOKIE, allowed
from .metrics import health, metrics_text

PAGE = Path(__file__).with_name("page.html")
SNAPSHOT_MAX_AGE_S = 0.25  # requests within this share one round trip to the writer
RECENT_FRAMES = 8  # shown frames per stream whose picture and map ?t= still finds (~2 s at 4 snapshots/s)
VIEW_PICTURE_SIZE = 640  # the longer side of a camera's picture on the page, pixels
EVENT_ID = re.compile(r"[0-9a-f]{20}")


def reserve_port(host: str, port: int, option: str = "--view") -> socket.socket:
    """A socket bound to ``host:port`` and listening, for a LiveView to serve on later: a run binds
    its addresses before Ray starts processes that take ports of their own. Raises AnomstreamError
    (one line, naming ``option`` and the address) when nothing can listen there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as error:
        cause = (error.strerror or str(error)).split(" (while attempting")[0]  # create_server repeats the address
        raise AnomstreamError(f"{option}: cannot serve on {host}:{port} ({cause})") from None


class LiveView:
    """Serves ``snapshot()`` (stream id -> the writer's view snapshot, or its accounting attrs alone
    when ``page`` is False) on ``host:port`` from a daemon thread; ``run_figures()``: the run's own
    figures for /metrics (``events``); ``token``: what every request must carry (None: none);
    ``snapshots``: the events folder whose ``<event_id>.jpg`` the page shows (None: none);
    ``listener``: the socket :func:`reserve_port` bound for ``host:port`` (None: bound here); it is
    closed with the view. Raises AnomstreamError (one line, naming the address) when it cannot listen there."""

    def __init__(self, snapshot: Callable[[], dict[str, dict[str, Any]]], host: str, port: int,
                 token: str | None = None, page: bool = True,
                 run_figures: Callable[[], dict[str, Any]] | None = None, snapshots: Path | None = None,
                 listener: socket.socket | None = None) -> None:
        import uvicorn

        self.listener = listener or reserve_port(host, port)  # uvicorn would log a traceback-like report instead

        self._snapshot, self._cached, self._cached_at = snapshot, {}, 0.0
        self._recent: dict[str, deque[tuple[float, dict[str, Any]]]] = {}  # stream id -> (frame_time, its view)
        self.token, self.page, self.run_figures, self.snapshots = token, page, run_figures or dict, snapshots
        self._lock = threading.Lock()
        config = uvicorn.Config(self._app(), host=host, port=port, log_level="error", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.listener]}, name="live view",
                                       daemon=True)
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            time.sleep(0.05)
        if not self.server.started:
            self.listener.close()
            raise AnomstreamError(f"--view: cannot serve on {host}:{port}")
        self.url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            if time.monotonic() - self._cached_at > SNAPSHOT_MAX_AGE_S:
                self._cached, self._cached_at = self._snapshot(), time.monotonic()
                for stream_id, view in self._cached.items():
                    recent = self._recent.setdefault(stream_id, deque(maxlen=RECENT_FRAMES))
                    if view.get("frame_time") is not None and (not recent or recent[-1][0] != view["frame_time"]):
                        recent.append((view["frame_time"], view))
            return self._cached

    def shown_view(self, index: int, frame_time: float | None) -> dict[str, Any] | None:
        """The n-th stream's (by sorted id) view snapshot as it was when it showed ``frame_time``
        (seconds since the epoch, as the JSON gave it; None: as it is now); None: no such stream, or
        that frame is no longer among its last RECENT_FRAMES (its picture and map would not match)."""
        views = sorted(self.snapshot().items())
        if not 0 <= index < len(views):
            return None
        stream_id, view = views[index]
        if frame_time is None:
            return view
        with self._lock:
            earlier = [seen for time_shown, seen in self._recent.get(stream_id, ()) if time_shown == frame_time]
        return earlier[-1] if earlier else None

    def _app(self):
        from fastapi import FastAPI
        from fastapi.responses import Response

        app = FastAPI(title="anomstream live", docs_url=None, redoc_url=None, openapi_url=None)
        if self.token is not None:
            self._guard(app)

        @app.get("/metrics")
        def metrics() -> Response:
            from prometheus_client import CONTENT_TYPE_LATEST

            return Response(metrics_text(self.snapshot(), self.run_figures()), media_type=CONTENT_TYPE_LATEST)

        @app.get("/healthz")
        def healthz() -> dict[str, Any]:
            return health(self.snapshot())

        if self.page:
            self._page_routes(app)
        return app

    def _guard(self, app) -> None:
        """Every request carries the token (:func:`pipeline.view.access.allowed`), else 401; a page
        opened with ``?token=`` gets it as a cookie and is sent to the address without it."""
        from fastapi.responses import JSONResponse, RedirectResponse

        @app.middleware("http")
        async def check(request, call_next):
            query = request.query_params.get("token")
            if not allowed(self.token, request.headers.get("authorization"), request.cookies.get(COOKIE), query):
                return JSONResponse({"detail": "this view needs its token (see docs/live.md, Live view)"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            if query is None or request.url.path != "/" or not allowed(self.token, None, None, query):
                return await call_next(request)  # only the page trades a right ?token= for the cookie
            response = RedirectResponse("./", status_code=303)
            response.set_cookie(COOKIE, query, httponly=True, samesite="strict")
            return response

    def _page_routes(self, app) -> None:
        from fastapi import HTTPException
        from fastapi.responses import HTMLResponse, Response

        @app.get("/", response_class=HTMLResponse)
        def page() -> str:
            return PAGE.read_text(encoding="utf-8")

        @app.get("/api/streams")
        def streams() -> list[dict[str, Any]]:
            return [{"id": stream_id, "index": n, **{k: v for k, v in view.items() if k not in ("jpeg", "map_png")},
                     "has_frame": view["jpeg"] is not None, "has_map": view.get("map_png") is not None}
                    for n, (stream_id, view) in enumerate(sorted(self.snapshot().items()))]

        def shown(index: int, frame_time: float | None, key: str, media_type: str, missing: str) -> Response:
            """The n-th stream's picture ``key`` of the view that showed ``frame_time``, or 404 saying ``missing``."""
            view = self.shown_view(index, frame_time)
            if view is None or view.get(key) is None:
                raise HTTPException(status_code=404, detail=missing)
            return Response(view[key], media_type=media_type, headers={"Cache-Control": "no-store"})

        @app.get("/api/streams/{index}/frame.jpg")
        def frame(index: int, t: float | None = None) -> Response:
            return shown(index, t, "jpeg", "image/jpeg", "no scored frame yet")

        @app.get("/api/streams/{index}/map.png")
        def map_overlay(index: int, t: float | None = None) -> Response:
            return shown(index, t, "map_png", "image/png", "no map to lay over a camera picture")

        @app.get("/api/events/{event_id}.jpg")
        def event_snapshot(event_id: str) -> Response:
            path = self.snapshots / f"{event_id}.jpg" if self.snapshots is not None and EVENT_ID.fullmatch(event_id) else None
            if path is None or not path.is_file():
                raise HTTPException(status_code=404, detail="no such event snapshot")
            return Response(path.read_bytes(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.listener.close()
