"""Calibrated, causal frame scores: a model's score terms standardised by their statistics on normal
data, summed with weights, averaged over a trailing window, and mapped to how rare that value is on
normal data.

The stored score is ``-log10 p``, where ``p`` is the share of normal frames (of the calibration
data) whose statistic is at least as high: 3 means one normal frame in 1,000 scores this high, so a
threshold is a false-alarm rate (``threshold = -log10(rate)``). Above the calibration data's 95th
percentile, ``p`` follows an exponential tail fitted to the exceedances (the peaks-over-threshold
method with an exponential excess, Pickands 1975 / Balkema-de Haan 1974 in its simplest form), so
scores keep growing past the highest normal value instead of saturating.

Standardisation by median and MAD (x 1.4826, the normal-consistent scale) is robust to the few odd
frames any normal footage holds. Nothing here looks at a frame after the one being scored.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CALIBRATION_FORMAT = "anomstream-calibration/1"
TAIL_LEVEL = 0.95  # above this quantile of the normal statistic the exponential tail takes over
QUANTILE_LEVELS = np.linspace(0.0, TAIL_LEVEL, 96)
MAD_TO_SIGMA = 1.4826
# a normal law's mean excess over its 95th percentile per (95th percentile - median): 0.418 / 1.645
GAUSSIAN_TAIL = 0.254
MIN_RATE = 1e-300  # calibrated scores stop at 300 (finite, for JSON and the event detector)


@dataclass
class TermStatistics:
    median: float
    scale: float  # MAD x 1.4826 (a small floor keeps a constant term finite)
    weight: float


@dataclass
class Calibration:
    """What a calibration run learnt from normal data. ``reference``: per-position normal medians
    (``NAME``) and robust scales (``NAME_scale``), (H, W) float32 each, of the model's reference
    maps (``AnomalyModel.set_reference``). ``quantiles``:
    the normal statistic at ``QUANTILE_LEVELS``; ``tail_scale``: the mean excess above the last."""

    model: str
    terms: dict[str, TermStatistics]
    smoothing: int  # trailing window in frames (1: none)
    quantiles: np.ndarray
    tail_scale: float
    false_alarm_rate: float
    data: str  # the normal data it was fitted on
    frames: int
    checkpoint_sha256: str | None = None
    reference: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def footage(self) -> list[str]:
        """The source specs of ``data`` (written joined by ", " when it was fitted); [] when none."""
        return self.data.split(", ") if self.data else []

    @property
    def threshold(self) -> float:
        """The calibrated score above which a frame alarms: ``-log10(false_alarm_rate)``."""
        return float(-np.log10(self.false_alarm_rate))

    def statistic(self, terms: dict[str, np.ndarray]) -> np.ndarray:
        """Per-frame terms (each float (N,)) -> the weighted sum of standardised terms, float64 (N,)."""
        missing = sorted(set(self.terms) - set(terms))
        if missing:
            raise ValueError(f"calibration needs the score terms {', '.join(missing)}; the model gave "
                             f"{', '.join(sorted(terms)) or 'none'}")
        return sum(stats.weight * (np.asarray(terms[name], np.float64) - stats.median) / stats.scale
                   for name, stats in self.terms.items())

    def rarity(self, statistic: np.ndarray) -> np.ndarray:
        """Smoothed statistic (N,) -> calibrated score ``-log10 p`` (N,), float64, >= 0; NaN stays NaN."""
        statistic = np.asarray(statistic, np.float64)
        top = self.quantiles[-1]
        exceed = 1.0 - np.interp(statistic, self.quantiles, QUANTILE_LEVELS, left=0.0)
        tail = (1.0 - TAIL_LEVEL) * np.exp(-(statistic - top) / self.tail_scale)
        p = np.where(statistic > top, tail, np.maximum(exceed, 1.0 - TAIL_LEVEL))
        return -np.log10(np.maximum(p, MIN_RATE))

    def to_payload(self) -> dict[str, Any]:
        """Plain types and arrays only (``torch.load(weights_only=True)`` reads it back)."""
        import torch

        return {
            "format": CALIBRATION_FORMAT, "model": self.model, "smoothing": self.smoothing,
            "terms": {name: [s.median, s.scale, s.weight] for name, s in self.terms.items()},
            "quantiles": self.quantiles.tolist(), "tail_scale": self.tail_scale,
            "false_alarm_rate": self.false_alarm_rate, "data": self.data, "frames": self.frames,
            "checkpoint_sha256": self.checkpoint_sha256,
            "reference": {name: torch.from_numpy(np.ascontiguousarray(m, np.float32)) for name, m in self.reference.items()},
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Calibration:
        if not isinstance(payload, dict) or payload.get("format") != CALIBRATION_FORMAT:
            raise ValueError("not an anomstream calibration")
        return cls(
            model=payload["model"], smoothing=int(payload["smoothing"]),
            terms={name: TermStatistics(*map(float, values)) for name, values in payload["terms"].items()},
            quantiles=np.asarray(payload["quantiles"], np.float64), tail_scale=float(payload["tail_scale"]),
            false_alarm_rate=float(payload["false_alarm_rate"]), data=str(payload["data"]),
            frames=int(payload["frames"]), checkpoint_sha256=payload.get("checkpoint_sha256"),
            reference={name: np.asarray(m, np.float32) for name, m in payload.get("reference", {}).items()},
        )

    def summary(self) -> dict[str, Any]:
        """JSON-ready, for store attrs and reports (no arrays)."""
        return {"threshold": round(self.threshold, 4), "false_alarm_rate": self.false_alarm_rate,
                "smoothing": self.smoothing, "data": self.data, "frames": self.frames,
                "terms": {name: {"median": s.median, "scale": s.scale, "weight": s.weight} for name, s in self.terms.items()},
                "checkpoint_sha256": self.checkpoint_sha256,
                # only when true: stores of calibrations from before it existed resume with the same summary
                **({"position_scale": True} if any(name.endswith("_scale") for name in self.reference) else {})}


def term_statistics(values: np.ndarray, weight: float) -> TermStatistics:
    """Median and MAD x 1.4826 of a term on normal frames (the scale floored at 1e-6 of the median's size)."""
    values = np.asarray(values, np.float64)
    median = float(np.median(values))
    scale = float(np.median(np.abs(values - median)) * MAD_TO_SIGMA)
    return TermStatistics(median, max(scale, 1e-6 * abs(median), 1e-12), weight)


def fit_rarity(statistic: np.ndarray) -> tuple[np.ndarray, float]:
    """Normal statistic (N,) -> (quantiles at ``QUANTILE_LEVELS``, the tail's scale: the mean excess
    over the top quantile, but at least a Gaussian tail's, ``GAUSSIAN_TAIL`` x (top - median)).

    The floor matters for short calibration footage: of 100 frames (10 s held out by ``anomstream
    fit``; a trailing mean of 9 makes them ~12 independent ones) the ~5 above the top quantile can
    lie close together by chance, and a frame just past them would then score as a
    one-in-a-million rarity (vtest.avi: a mean excess of 0.05 where a Gaussian tail has 0.37).
    No tail lighter than a Gaussian's is believed; heavier ones (the shipped Ped2: 0.86 over a
    Gaussian's 0.56, 2,486 frames) are kept as measured."""
    statistic = np.asarray(statistic, np.float64)
    quantiles = np.maximum.accumulate(np.quantile(statistic, QUANTILE_LEVELS))
    quantiles = quantiles + np.arange(len(quantiles)) * 1e-12  # strictly increasing for interpolation
    excess = statistic[statistic > quantiles[-1]] - quantiles[-1]
    scale = float(excess.mean()) if excess.size else 1.0
    gaussian = GAUSSIAN_TAIL * float(quantiles[-1] - np.interp(0.5, QUANTILE_LEVELS, quantiles))
    return quantiles, max(scale, gaussian, 1e-9)


class TrailingMean:
    """Mean of the values of the last ``window`` frames by frame index (causal), see :meth:`add`."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.recent: deque[tuple[int, float]] = deque()

    def add(self, frame: int, value: float) -> float:
        """Frames come in increasing order; returns the mean over the values of frames
        (frame - window, frame], shrunk by sqrt(n / window) when only n < window of them have one
        (the start of a stream, after a gap, dropped frames): a mean of fewer values varies more,
        and is compared with means of ``window`` values. Standardised values are ~0 on normal data,
        so the shrink errs towards fewer false alarms."""
        self.recent.append((frame, value))
        while self.recent[0][0] <= frame - self.window:
            self.recent.popleft()
        n = len(self.recent)
        return sum(v for _, v in self.recent) / n * (n / self.window) ** 0.5


class StreamCalibrator:
    """The calibrated score of one stream's rows, fed in frame order (the trailing window is kept
    across batches; it spans ``smoothing`` frames by index, so dropped and gap frames count as time
    passing and a window after a gap averages fewer values)."""

    def __init__(self, calibration: Calibration) -> None:
        self.calibration = calibration
        self.mean = TrailingMean(calibration.smoothing)

    def smoothed(self, frame_index: np.ndarray, terms: dict[str, np.ndarray], scored: np.ndarray) -> np.ndarray:
        """The trailing statistic (before the rarity) of the rows, float64 (B,), NaN where not scored."""
        out = np.full(len(frame_index), np.nan, np.float64)
        rows = np.flatnonzero(scored)
        if len(rows):
            instant = self.calibration.statistic({name: np.asarray(values)[rows] for name, values in terms.items()})
            out[rows] = [self.mean.add(int(frame_index[row]), float(value)) for row, value in zip(rows, instant)]
        return out

    def __call__(self, frame_index: np.ndarray, terms: dict[str, np.ndarray], scored: np.ndarray) -> np.ndarray:
        """Rows' ``frame_index`` int (B,), terms float (B,) each, ``scored`` bool (B,) -> calibrated
        score float32 (B,), NaN where not scored."""
        return self.calibration.rarity(self.smoothed(frame_index, terms, scored)).astype(np.float32)
