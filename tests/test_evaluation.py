import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomstream.pipeline.datasets.video_labels import (
    avenue_frame_labels,
    load_frame_labels,
    ped2_frame_labels,
    ped2_masks,
)
from anomstream.pipeline.errors import AnomstreamError
from anomstream.pipeline.evaluation.frame_metrics import (
    frame_auc,
    normalise,
    pixel_auc,
    robust_window_mean,
    running_minmax,
)


def test_micro_and_macro_auc_match_sklearn_by_hand():
    scores = {"a": np.array([0.1, 0.4, 0.35, 0.8]), "b": np.array([0.2, 0.9, 0.3]), "c": np.array([0.5, 0.6])}
    labels = {"a": np.array([0, 0, 1, 1]), "b": np.array([0, 1, 0]), "c": np.array([1, 1])}
    result = frame_auc(scores, labels)
    micro = roc_auc_score([0, 0, 1, 1, 0, 1, 0, 1, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.3, 0.5, 0.6])
    assert result.micro == pytest.approx(micro)
    assert result.per_video == {"a": pytest.approx(0.75), "b": pytest.approx(1.0)}  # c is one class: skipped
    assert result.macro == pytest.approx(0.875) and result.frames == 9
    with pytest.raises(AnomstreamError, match="stream a: 4 scores but 3 labels"):
        frame_auc(scores, {**labels, "a": labels["a"][:3]})


def test_causal_normalisation_uses_only_the_past():
    scores = np.array([3.0, 1.0, 2.0, 5.0, 0.0])
    causal = running_minmax(scores)
    np.testing.assert_allclose(causal, [0, 0, 0.5, 1, 0])
    prefix = normalise(scores[:3], "causal", 2)
    np.testing.assert_allclose(normalise(scores, "causal", 2)[:3], prefix)  # the future changes nothing
    offline = normalise(scores, "offline")
    np.testing.assert_allclose(offline, [0.6, 0.2, 0.4, 1.0, 0.0])


def test_pixel_auc_pools_pixels():
    maps = np.array([[[0.1, 0.9], [0.2, 0.3]]])
    masks = np.array([[[0, 1], [0, 0]]], bool)
    assert pixel_auc(maps, masks) == 1.0
    with pytest.raises(AnomstreamError, match="all one class"):
        pixel_auc(maps, np.zeros_like(masks))


def test_authors_ped2_scores_reproduce_published_auc(ped2):
    """The DMAD authors' released per-frame terms through our metric code: 0.9863 raw, 0.9969 smoothed."""
    ref = np.load(ped2 / "reference" / "dmad_official_scores_ped2.npz")
    anomalous = 1 - ref["arr_5"][0]
    terms = [1 - ref["arr_0"], 1 - ref["arr_1"], 1 - ref["arr_4"]]  # stored as normality: invert
    weights = [0.2, 0.4, 0.6]
    combined = sum(w * t for w, t in zip(weights, terms))
    assert frame_auc({"all": combined}, {"all": anomalous}).micro == pytest.approx(0.9863, abs=5e-5)
    smoothed = sum(w * robust_window_mean(t) for w, t in zip(weights, terms))
    assert frame_auc({"all": smoothed}, {"all": anomalous}).micro == pytest.approx(0.9969, abs=5e-5)


def test_ped2_labels_split_by_clip_and_masks_agree(ped2):
    labels = ped2_frame_labels(ped2)
    assert list(labels) == [f"{k:02d}" for k in range(1, 13)]
    assert [len(v) for v in labels.values()] == [180, 180, 150, 180, 150, 180, 180, 180, 120, 150, 180, 180]
    assert sum(int(v.sum()) for v in labels.values()) == 1648
    masks = list(ped2_masks(ped2, "02"))
    assert len(masks) == 180 and masks[0].shape == (240, 360)
    np.testing.assert_array_equal([m.any() for m in masks], labels["02"].astype(bool))


def test_avenue_labels_from_mat_masks(shared_data):
    labels = avenue_frame_labels(shared_data / "avenue" / "testing_label_mask")
    assert list(labels) == ["08", "20"] and len(labels["08"]) == 36 and labels["08"].all()
    assert len(labels["20"]) == 273 and labels["20"].sum() == 154  # the counts the data README gives


def test_unknown_dataset_and_missing_labels_are_errors(tmp_path):
    with pytest.raises(AnomstreamError, match="unknown dataset 'ucf'"):
        load_frame_labels("ucf", tmp_path)
    with pytest.raises(AnomstreamError, match="expected frame_labels_ped2.npy"):
        load_frame_labels("ped2", tmp_path)


def test_robust_window_removes_single_spikes_per_video():
    series = np.zeros(30)
    series[12] = 1.0  # one-frame spike: not among the 5 values nearest its window's mean
    series[20:] = 1.0  # a sustained rise survives
    smoothed = robust_window_mean(series, edge_pad=True)
    assert smoothed.shape == series.shape and smoothed[12] == 0.0
    assert smoothed[25:].min() == 1.0
    with pytest.raises(AnomstreamError, match="robust smoothing looks at future frames"):
        normalise(series, "causal", robust=True)
