"""What the live view shows of each stream, kept by the writer as rows are written: the latest
scored frame with its anomaly map (the camera's own picture, scaled for the page, with the map as a
translucent PNG to lay over it; or, for a batch without the picture, the model's input with the map
blended in), the score trace of the last minute and the frame rate of the source. No web code here."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from ..store import FrameStatus
from ..stream.windows import WindowBatch
from ..visualize import map_png, overlay_jpeg

TRACE_S = 60.0  # seconds of score trace kept
RATE_S = 5.0  # frames per second over the last this many seconds
VIEW_SIZE = 320  # the shown frame's longer side, pixels


class StreamView:
    """One stream's view. Rows arrive in frame order; times are capture times (seconds since the epoch)."""

    def __init__(self) -> None:
        self.trace: deque[tuple[float, float]] = deque()  # (capture time, score) of scored frames
        self.captured: deque[float] = deque()  # capture times of every row, for the frame rate
        self.image: np.ndarray | None = None  # uint8 (C, H, W), the model's input
        self.map: np.ndarray | None = None
        self.frame_time = float("nan")
        self.frame_score = float("nan")
        self.map_high: deque[float] = deque(maxlen=64)  # recent maps' 99th percentiles: one colour scale
        self.picture: bytes | None = None  # JPEG of the camera's picture of the shown frame (None: the model input)

    def add_rows(self, values: dict[str, np.ndarray]) -> None:
        """``values``: the rows just written (``timestamp``, ``status``, ``score``)."""
        timestamp, status, score = values["timestamp"], values["status"], values["score"]
        scored = status == FrameStatus.SCORED
        self.trace.extend(zip(timestamp[scored].tolist(), score[scored].tolist()))
        self.captured.extend(timestamp.tolist())
        if len(timestamp):
            newest = float(timestamp[-1])
            while self.trace and self.trace[0][0] < newest - TRACE_S:
                self.trace.popleft()
            while self.captured and self.captured[0] < newest - RATE_S:
                self.captured.popleft()

    def add_frame(self, batch: WindowBatch, values: dict[str, np.ndarray]) -> None:
        """The newest scored target of ``batch`` (scored into ``values``) becomes the shown frame."""
        scored = np.flatnonzero(values["status"] == FrameStatus.SCORED)
        if not len(scored) or batch.context + scored[-1] < 0:
            return
        target = int(scored[-1])
        picture = batch.preview[1] if batch.preview and batch.preview[0] == int(values["frame_index"][target]) else None
        if picture is None and self.picture is not None and self.frame_time > values["timestamp"][target] - 2.0:
            return  # a camera's picture shown recently stays: no flicker to the model's input
        self.picture = picture
        self.image = batch.frames[batch.context + target]
        self.map = values["map"][target]
        self.frame_time, self.frame_score = float(values["timestamp"][target]), float(values["score"][target])
        finite = self.map[np.isfinite(self.map)]
        if finite.size:
            self.map_high.append(float(np.percentile(finite.astype(np.float32), 99)))

    @property
    def fps(self) -> float:
        if len(self.captured) < 2:
            return 0.0
        return (len(self.captured) - 1) / max(self.captured[-1] - self.captured[0], 1e-9)

    def jpeg(self) -> bytes | None:
        """The shown frame, JPEG: the camera's picture, else the model's input with its map
        overlaid; None before the first scored frame."""
        if self.image is None:
            return None
        if self.picture is not None:
            return self.picture
        return overlay_jpeg(self.image, self.map, max(self.map_high) if self.map_high else 1.0, VIEW_SIZE)

    def map_png(self) -> bytes | None:
        """The shown frame's map as a translucent PNG to lay over :meth:`jpeg` (None: no camera
        picture, the map is in the JPEG already)."""
        if self.picture is None or self.map is None:
            return None
        return map_png(self.map, max(self.map_high) if self.map_high else 1.0)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the trace, the frame rate, the shown frame's time and score."""
        return {
            "trace": [[round(t, 3), round(s, 5)] for t, s in self.trace],
            "fps": round(self.fps, 2),
            "frame_time": None if np.isnan(self.frame_time) else self.frame_time,
            "frame_score": None if np.isnan(self.frame_score) else round(self.frame_score, 5),
            "picture": "camera" if self.picture is not None else "model_input",
        }
