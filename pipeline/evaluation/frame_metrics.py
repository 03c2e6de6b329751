"""Frame-level and pixel-level evaluation of per-frame scores against labels.

Normalisations:
- ``offline``: per-video min-max (uses the whole video, as the papers do), optional centred
  smoothing (a plain mean, or DMAD's robust window);
- ``causal``: running min-max over frames up to t only, optional trailing mean: what a live
  stream can do;
- ``raw``: the scores as stored.
Micro AUC = one ROC over the valid frames of all videos; macro AUC = mean of per-video AUCs over
videos that have both classes. Frames without a score (the first T-1 of a video) are excluded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.metrics import roc_auc_score

from ..errors import AnomstreamError, UndefinedMetricError

NORMALISATIONS = ("offline", "causal", "raw")
PROTOCOLS = {  # what each normalisation is, printed beside its figures
    "offline": "offline: per-video min-max, needs the whole video (papers' protocol)",
    "causal": "causal: running min-max over the frames so far (a stand-in for uncalibrated scores)",
    "raw": "causal: the stored score as written",
}
DMAD_WINDOW_WEIGHTS = np.array([1, 1, 1, 1, 1.2, 1.6, 1.2, 1, 1, 1, 1])


def minmax(scores: np.ndarray) -> np.ndarray:
    span = scores.max() - scores.min()
    return (scores - scores.min()) / span if span > 0 else np.zeros_like(scores)


def running_minmax(scores: np.ndarray) -> np.ndarray:
    """(s_t - min_{<=t}) / (max_{<=t} - min_{<=t}); 0 while the range is empty."""
    low = np.minimum.accumulate(scores)
    high = np.maximum.accumulate(scores)
    span = high - low
    return np.where(span > 0, (scores - low) / np.where(span > 0, span, 1), 0.0)


def centred_mean(scores: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return scores
    padded = np.pad(scores, window // 2, mode="edge")
    return sliding_window_view(padded, window)[: len(scores)].mean(axis=1)


def trailing_mean(scores: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return scores
    padded = np.pad(scores, (window - 1, 0), mode="edge")
    return sliding_window_view(padded, window).mean(axis=1)


def robust_window_mean(scores: np.ndarray, window: int = 11, keep: int = 5,
                       weights: np.ndarray = DMAD_WINDOW_WEIGHTS, edge_pad: bool = False) -> np.ndarray:
    """DMAD's Ped2 smoothing: in each centred window, a weighted mean of the ``keep`` values closest
    to the window mean. Non-causal. As the authors ran it (``edge_pad=False``), the first window//2
    outputs are 0 (the lowest min-max score) and the last repeat the last full window; with
    ``edge_pad`` the series is padded with its edge values instead, which suits one video at a time."""
    half = window // 2
    values = np.pad(scores, half, mode="edge") if edge_pad else scores
    views = sliding_window_view(values, window)
    distance = np.abs(views - views.mean(axis=1, keepdims=True))
    order = np.argsort(distance, axis=1, kind="stable")[:, :keep]
    mask = np.zeros_like(views)
    np.put_along_axis(mask, order, 1.0, axis=1)
    weighted = mask * weights
    inner = (views * weighted).sum(axis=1) / weighted.sum(axis=1)
    if edge_pad:
        return inner
    return np.concatenate([np.zeros(half), inner, np.full(half, inner[-1])])


def normalise(scores: np.ndarray, method: str, smoothing: int = 0, robust: bool = False) -> np.ndarray:
    """``robust``: DMAD's robust 11-frame window instead of a plain mean (offline only)."""
    if method == "offline":
        scaled = minmax(scores)
        return robust_window_mean(scaled, edge_pad=True) if robust else centred_mean(scaled, smoothing)
    if robust:
        raise AnomstreamError("robust smoothing looks at future frames: only with offline normalisation")
    if method == "causal":
        return trailing_mean(running_minmax(scores), smoothing)
    if method == "raw":
        return scores
    raise AnomstreamError(f"unknown normalisation {method!r}; known: {', '.join(NORMALISATIONS)}")


def combine_terms(terms: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Official DMAD combination: each raw term min-max normalised per video, then weighted."""
    return sum(weight * minmax(terms[name]) for name, weight in weights.items())


@dataclass
class FrameAUC:
    micro: float
    macro: float
    per_video: dict[str, float]
    frames: int


def frame_auc(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> FrameAUC:
    """``scores``/``labels``: stream id -> per-frame arrays of the same length (valid frames only)."""
    missing = sorted(set(scores) - set(labels))
    if missing:
        raise AnomstreamError(f"no labels for streams {', '.join(missing)}")
    per_video = {}
    for stream_id, values in scores.items():
        y = labels[stream_id]
        if len(y) != len(values):
            raise AnomstreamError(f"stream {stream_id}: {len(values)} scores but {len(y)} labels")
        if 0 < y.sum() < len(y):
            per_video[stream_id] = float(roc_auc_score(y, values))
    all_scores = np.concatenate(list(scores.values()))
    all_labels = np.concatenate([labels[k] for k in scores])
    if all_labels.min() == all_labels.max():
        raise UndefinedMetricError("labels of the scored frames are all one class: AUC is undefined")
    micro = float(roc_auc_score(all_labels, all_scores))
    macro = float(np.mean(list(per_video.values()))) if per_video else float("nan")
    return FrameAUC(micro, macro, per_video, len(all_scores))


def pixel_auc(maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel AUROC over all pooled pixels; maps and masks of the same shape (N, H, W)."""
    y = masks.reshape(-1).astype(bool)
    if y.all() or not y.any():
        raise UndefinedMetricError("pixel masks are all one class: pixel AUROC is undefined")
    return float(roc_auc_score(y, maps.reshape(-1).astype(np.float32)))
