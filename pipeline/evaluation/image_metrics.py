"""Still-image metrics: image AUROC and average precision (KolektorSDD2's usual figure), pixel AUROC and
PRO (per-region overlap up to an FPR limit)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from ..errors import UndefinedMetricError


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(roc_auc_score(_both_classes(labels, "image AUROC"), scores))


def image_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(average_precision_score(_both_classes(labels, "image AP"), scores))


def _both_classes(labels: np.ndarray, metric: str) -> np.ndarray:
    labels = np.asarray(labels, bool)
    if labels.all() or not labels.any():
        raise UndefinedMetricError(f"{metric} needs both normal and anomalous images")
    return labels


def pixel_auroc(maps: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """AUROC over every pixel of every image (maps and masks may differ in size between images)."""
    labels = np.concatenate([m.ravel() for m in masks]).astype(bool)
    if labels.all() or not labels.any():
        raise UndefinedMetricError("pixel AUROC needs both normal and anomalous pixels")
    return float(roc_auc_score(labels, np.concatenate([m.ravel() for m in maps]).astype(np.float32)))


def pro_score(maps: list[np.ndarray], masks: list[np.ndarray], max_fpr: float = 0.3, steps: int = 1000) -> float:
    """Area under the per-region-overlap curve for FPR in [0, max_fpr], divided by max_fpr.

    At each threshold t: FPR = share of normal pixels scoring >= t; PRO = mean over connected
    defect regions (8-connectivity, per image) of the share of the region's pixels scoring >= t.
    Thresholds are the normal-pixel quantiles for ``steps`` evenly spaced FPRs; every overlap is
    counted exactly (sorted scores + searchsorted), with no binarised maps.
    """
    normal, regions = [], []
    for score_map, mask in zip(maps, masks):
        mask = mask.astype(bool)
        normal.append(score_map[~mask].ravel())
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        for region in range(1, count + 1):
            regions.append(np.sort(score_map[labelled == region].ravel()))
    if not regions:
        raise UndefinedMetricError("PRO needs at least one defect region")
    normal_sorted = np.sort(np.concatenate(normal).astype(np.float64))
    if not normal_sorted.size:
        raise UndefinedMetricError("PRO needs normal pixels")
    targets = np.linspace(0.0, max_fpr, steps + 1)
    index = np.clip(np.ceil((1.0 - targets) * normal_sorted.size).astype(int), 0, normal_sorted.size - 1)
    above_all = np.nextafter(normal_sorted[-1], np.inf)  # FPR 0: just above every normal pixel
    thresholds = np.append(above_all, normal_sorted[index[1:]])
    fpr = 1.0 - np.searchsorted(normal_sorted, thresholds, side="left") / normal_sorted.size
    overlap = np.mean([1.0 - np.searchsorted(r, thresholds, side="left") / r.size for r in regions], axis=0)
    keep = fpr <= max_fpr
    fpr, overlap = fpr[keep], overlap[keep]
    if fpr[-1] < max_fpr:  # the curve is flat between the last threshold and max_fpr
        fpr, overlap = np.append(fpr, max_fpr), np.append(overlap, overlap[-1])
    return float(np.trapezoid(overlap, fpr) / max_fpr)
