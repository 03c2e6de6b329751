"""What became of every captured frame: status codes, counts per status, latency percentiles and
gaps of a stream, kept by the writer and stored in the stream's attrs."""

from __future__ import annotations

import time
from collections import deque
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..sources.base import LiveStatus

LATENCY_SAMPLES = 100_000  # percentiles over the most recent scored frames: a camera runs for days
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # the histogram's upper bounds (and +Inf)


class FrameStatus(IntEnum):
    """What became of each captured frame (the ``status`` array, uint8; names in the stream's
    ``status_codes`` attr). Every frame a source delivers gets a row with one of these."""

    SCORED = 0  # scored from a full, contiguous window
    WARMUP = 1  # the stream's first frames: no full window yet
    DROPPED_BEHIND = 2  # live policy ``latest``: the replicas were behind, the frame was not scored
    SOURCE_GAP = 3  # the window would span a disconnect, a stall or a frozen stretch: not scored
    DECODE_ERROR = 4  # delivered but not decodable
    FROZEN = 5  # the feed repeated the same image for longer than the frozen limit: not scored

    @classmethod
    def codes(cls) -> dict[str, int]:
        return {status.name.lower(): int(status) for status in cls}


class StreamAccounting:
    """Counts of written rows per status, capture-to-written latency of scored frames (live
    streams, whose timestamps are seconds since the epoch) and the stream's gaps."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.counts = np.zeros(len(FrameStatus), dtype=np.int64)
        self.latency_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.latency_counts = np.zeros(len(LATENCY_BUCKETS_S) + 1, dtype=np.int64)  # per bucket, all the run
        self.latency_sum_s = 0.0
        self.gaps: list[dict[str, Any]] = []
        self.camera: LiveStatus | None = None  # a camera's state, as its decoder last said
        self.scene: dict[str, Any] | None = None  # whether the model fits the scene (calibration.scene), once judged

    def count(self, status: np.ndarray) -> None:
        """Rows on disk by status (uint8 (n,); 255, no row, is not counted)."""
        self.counts += np.bincount(status[status < len(FrameStatus)], minlength=len(FrameStatus))

    def rows_written(self, status: np.ndarray, timestamp: np.ndarray, written_at: float) -> None:
        """Rows just written: ``status`` uint8 (n,), ``timestamp`` float64 (n,) seconds, ``written_at``: time.time()."""
        self.count(status)
        if self.live:
            scored = status == FrameStatus.SCORED
            latency_s = written_at - timestamp[scored]
            self.latency_ms.extend((latency_s * 1000.0).tolist())
            self.latency_counts += np.bincount(np.searchsorted(LATENCY_BUCKETS_S, latency_s),
                                               minlength=len(self.latency_counts))
            self.latency_sum_s += float(latency_s.sum())

    def add_gaps(self, gaps: list[dict[str, Any]]) -> None:
        """Gaps (``{"start", "end", "kind"}``) not known yet: a stretch of a recording decoded again (a
        writer takeover, ``--resume``) reports its gaps again, and each is kept once."""
        for gap in gaps:
            if gap not in self.gaps:
                self.gaps.append(gap)

    def latency_percentiles(self) -> dict[str, float] | None:
        """``{"p50", "p95", "p99"}`` in ms over the recent scored frames; None before the first."""
        if not self.latency_ms:
            return None
        values = np.percentile(np.fromiter(self.latency_ms, float), [50, 95, 99])
        return {"p50": round(float(values[0]), 1), "p95": round(float(values[1]), 1), "p99": round(float(values[2]), 1)}

    def latency_histogram(self) -> dict[str, Any] | None:
        """Capture to written of every scored frame of the run (live streams): ``le_s`` the upper
        bounds (seconds, the last +Inf as None), ``counts`` cumulative per bound (Prometheus'
        histogram), ``sum_s``; None before the first."""
        if not self.latency_counts.any():
            return None
        return {"le_s": [*LATENCY_BUCKETS_S, None], "counts": np.cumsum(self.latency_counts).tolist(),
                "sum_s": round(self.latency_sum_s, 3)}

    def attrs(self) -> dict[str, Any]:
        """The stream attrs this accounting owns (``camera``: a camera's state, the age of its newest
        frame as of now, what it sends; cameras only; ``scene``: whether the model fits the scene,
        once a block of frames was judged: :class:`pipeline.calibration.scene.SceneVerdict`)."""
        camera = {"camera": self.camera.to_dict(time.time())} if self.camera is not None else {}
        scene = {"scene": self.scene} if self.scene is not None else {}
        return {
            **camera, **scene,
            "status_codes": FrameStatus.codes(),
            "frame_counts": {status.name.lower(): int(self.counts[status]) for status in FrameStatus},
            "latency_ms": self.latency_percentiles(),
            "latency_histogram": self.latency_histogram(),
            "gaps": list(self.gaps),
            "reconnections": sum(1 for gap in self.gaps if gap["kind"] in ("disconnect", "stall")),
        }
