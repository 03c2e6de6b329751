"""Which camera states the driver passes on to the writers: every change of state or reason at
once, the newest frame's time at most every REFRESH_S per camera."""

from __future__ import annotations

import time
from typing import Any

from ..sources.base import LiveStatus

REFRESH_S = 1.0  # a live camera's "last frame N s ago" in the store and the view is at most this old


class CameraWatch:
    """The last state sent per camera stream, and when (seconds, ``time.monotonic``). ``rows``: what
    sends to the writers (``set_camera(stream_id, status)``: a RowSender)."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows
        self.sent: dict[str, tuple[LiveStatus, float]] = {}

    def seen(self, stream_id: str, status: LiveStatus | None) -> None:
        """A decoder's latest word on its camera (None: not a camera): to the writer when due."""
        if status is not None and self.due(stream_id, status, time.monotonic()):
            self.rows.set_camera(stream_id, status)

    def due(self, stream_id: str, status: LiveStatus, now: float) -> bool:
        """Whether ``status`` (a decoder's latest word on the stream's camera) goes to the writer;
        if so it counts as sent at ``now``."""
        last = self.sent.get(stream_id)
        changed = last is None or (last[0].state, last[0].reason, last[0].info) != (status.state, status.reason, status.info)
        if not changed and now - last[1] < REFRESH_S:
            return False
        self.sent[stream_id] = (status, now)
        return True
