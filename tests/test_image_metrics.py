"""Still-image metrics against sklearn on tiny cases and PRO on hand-built masks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomstream.pipeline.errors import UndefinedMetricError
from anomstream.pipeline.evaluation.image_metrics import (
    image_auroc,
    image_average_precision,
    pixel_auroc,
    pro_score,
)


def test_image_auroc_and_average_precision_by_hand():
    scores, labels = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    assert image_auroc(scores, labels) == pytest.approx(0.75)
    # ranked 0.8 (defect), 0.4, 0.35 (defect), 0.1: precision 1 at recall 1/2, 2/3 at recall 1
    assert image_average_precision(scores, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    with pytest.raises(UndefinedMetricError, match="image AUROC needs both"):
        image_auroc(scores, np.zeros(4))
    with pytest.raises(UndefinedMetricError, match="image AP needs both"):
        image_average_precision(scores, np.ones(4))


def test_pixel_auroc_pools_images_of_different_sizes():
    rng = np.random.default_rng(0)
    maps = [rng.random((4, 6)), rng.random((3, 5))]
    masks = [rng.random((4, 6)) > 0.7, rng.random((3, 5)) > 0.7]
    expected = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))
    assert pixel_auroc(maps, masks) == pytest.approx(expected)


def _two_regions():
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = True  # region A: 4 px
    mask[6:9, 6:9] = True  # region B: 9 px
    normal = np.random.default_rng(0).random((10, 10)) * 0.5 + 0.25
    return mask, normal


def test_pro_perfect_map_is_one_and_counts_regions_not_pixels():
    mask, normal = _two_regions()
    assert pro_score([mask.astype(float)], [mask]) == pytest.approx(1.0)
    # A above every normal pixel, B below all: half of the regions found at every FPR,
    # although B holds 9 of the 13 defect pixels.
    scores = normal.copy()
    scores[1:3, 1:3], scores[6:9, 6:9] = 1.0, 0.0
    assert pro_score([scores], [mask]) == pytest.approx(0.5)


def test_pro_linear_in_fpr_when_region_scores_match_normal_ones():
    # One region whose pixels score like the normal pixels: its overlap at a threshold equals the
    # FPR there, so the curve is overlap = fpr and its area up to 0.3, over 0.3, is 0.15.
    normal = np.linspace(0.0, 1.0, 100_000)
    mask = np.zeros(200_000, bool)
    mask[100_000:] = True
    scores = np.concatenate([normal, normal])
    assert pro_score([scores.reshape(400, 500)], [mask.reshape(400, 500)]) == pytest.approx(0.15, abs=1e-3)


def test_pro_needs_a_region():
    with pytest.raises(UndefinedMetricError, match="defect region"):
        pro_score([np.zeros((3, 3))], [np.zeros((3, 3), bool)])
