"""Still-image datasets: the MTD split (DS2 protocol), the MVTec AD, MVTec LOCO and KolektorSDD2 layouts,
masks, bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from layout_builders import ksdd2_from_mtd, loco_from_mtd, mvtec_from_mtd

from anomstream.pipeline.datasets.layouts import (
    ksdd2_split,
    mtd_split,
    mvtec_loco_split,
    mvtec_split,
)
from anomstream.pipeline.datasets.specs import dataset_records, parse_dataset_spec, read_mask
from anomstream.pipeline.errors import SourceError
from anomstream.pipeline.sources.resolve import open_sources
from anomstream.pipeline.training.anomalies import labelled_examples


@pytest.fixture(scope="module")
def mtd(shared_data: Path) -> Path:
    return shared_data / "mtd"


def test_mtd_split_is_seeded_disjoint_and_covers_every_image(mtd):
    train, test = mtd_split(mtd, seed=0)
    again_train, _ = mtd_split(mtd, seed=0)
    other_train, _ = mtd_split(mtd, seed=1)
    every_image = {p for p in mtd.glob("MT_*/Imgs/*.jpg")}
    train_paths, test_paths = {r.path for r in train}, {r.path for r in test}
    assert train_paths.isdisjoint(test_paths)
    assert train_paths | test_paths == every_image
    free = [p for p in every_image if p.parent.parent.name == "MT_Free"]
    assert len(train) == int(0.8 * len(free)) and all(not r.anomalous for r in train)
    assert {r.category for r in train} == {"MT_Free"}
    assert sum(r.anomalous for r in test) == len(every_image) - len(free)
    assert [r.path for r in again_train] == [r.path for r in train]
    assert {r.path for r in other_train} != train_paths


def test_mtd_test_split_is_one_stream_per_class(mtd):
    sources = open_sources(f"mtd:{mtd}")
    names = [s.stream_id for s in sources]
    assert names[0] == "MT_Free" and set(names[1:]) == {"MT_Blowhole", "MT_Crack"}
    _, test = mtd_split(mtd)
    assert sum(s.frame_count for s in sources) == len(test)
    (train,) = open_sources(f"mtd:{mtd}?split=train", dataset_split="test")
    assert train.frame_count == len(mtd_split(mtd)[0])


def test_mtd_masks_are_thresholded_and_free_masks_empty(mtd):
    _, test = mtd_split(mtd)
    crack = next(r for r in test if r.category == "MT_Crack")
    image = cv2.imread(str(crack.path))
    mask = read_mask(crack, image.shape[:2])
    raw = cv2.imread(str(crack.mask_path), cv2.IMREAD_GRAYSCALE)
    assert mask.dtype == bool and mask.any() and np.array_equal(mask, raw > 127)
    free = next(r for r in test if not r.anomalous)
    assert not read_mask(free, cv2.imread(str(free.path)).shape[:2]).any()


def test_mask_of_wrong_size_is_named(mtd):
    _, test = mtd_split(mtd)
    crack = next(r for r in test if r.category == "MT_Crack")
    with pytest.raises(SourceError, match=rf"{crack.mask_path.name}: mask is \d+x\d+, its image {crack.path.name} is 7x5"):
        read_mask(crack, (5, 7))


def test_mvtec_layout(mtd, tmp_path):
    category = mvtec_from_mtd(mtd, tmp_path)
    train, test = mvtec_split(category)
    assert [r.path.name for r in train] == ["000.png", "001.png", "002.png", "003.png"]
    assert [(r.category, r.path.name, r.anomalous) for r in test] == [
        ("good", "000.png", False), ("crack", "000.png", True), ("crack", "001.png", True), ("crack", "002.png", True)]
    assert test[1].mask_path == category / "ground_truth" / "crack" / "000_mask.png"
    assert [s.stream_id for s in open_sources(f"mvtec:{category}")] == ["good", "crack"]
    (category / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(SourceError, match="001.png: ground-truth mask .*001_mask.png not found"):
        mvtec_split(category)


def test_mvtec_loco_layout_unites_each_defects_masks(mtd, tmp_path):
    category = loco_from_mtd(mtd, tmp_path)
    train, test = mvtec_loco_split(category)
    assert [r.path.name for r in train] == ["000.png", "001.png", "002.png", "003.png"]  # validation/ not used
    assert [(r.category, r.path.name, r.anomalous) for r in test] == [
        ("good", "000.png", False), ("good", "001.png", False), ("logical_anomalies", "000.png", True),
        ("logical_anomalies", "001.png", True), ("structural_anomalies", "000.png", True)]
    assert [s.stream_id for s in open_sources(f"mvtec_loco:{category}")] == [
        "good", "logical_anomalies", "structural_anomalies"]
    hole = test[2]
    assert hole.mask_path == category / "ground_truth" / "logical_anomalies" / "000"
    image = cv2.imread(str(hole.path))
    original = cv2.imread(str(min((mtd / "MT_Blowhole" / "Imgs").glob("*.png"))), cv2.IMREAD_GRAYSCALE) > 127
    half = cv2.imread(str(hole.mask_path / "000.png"), cv2.IMREAD_GRAYSCALE) > 127
    assert half.sum() < original.sum()
    np.testing.assert_array_equal(read_mask(hole, image.shape[:2]), original)  # union of both files
    assert not read_mask(test[0], image.shape[:2]).any()

    for mask in (hole.mask_path / "000.png", hole.mask_path / "001.png"):
        mask.unlink()
    with pytest.raises(SourceError, match="000.png: ground-truth folder .*logical_anomalies/000 holds no mask"):
        mvtec_loco_split(category)
    hole.mask_path.rmdir()
    with pytest.raises(SourceError, match="000.png: ground-truth mask .*logical_anomalies/000 not found"):
        mvtec_loco_split(category)


def test_ksdd2_layout_labels_images_by_their_masks(mtd, tmp_path):
    root = ksdd2_from_mtd(mtd, tmp_path)
    train, test = ksdd2_split(root)
    assert [r.path.name for r in train] == ["10000.png", "10001.png", "10003.png", "10004.png"]  # the crack is left out
    assert [(r.path.name, r.category, r.anomalous) for r in test] == [
        ("10001.png", "good", False), ("10003.png", "good", False),
        ("10000.png", "defect", True), ("10002.png", "defect", True)]
    assert [s.stream_id for s in open_sources(f"ksdd2:{root}")] == ["good", "defect"]
    hole = test[2]
    assert hole.mask_path == root / "test" / "10000_GT.png"
    raw = cv2.imread(str(hole.mask_path), cv2.IMREAD_GRAYSCALE)
    assert raw.max() == 1  # a 0/1 mask
    np.testing.assert_array_equal(read_mask(hole, raw.shape), raw > 0)
    assert test[0].mask_path is None and not read_mask(test[0], raw.shape).any()

    (root / "test" / "10002_GT.png").unlink()
    with pytest.raises(SourceError, match="10002.png: ground-truth mask 10002_GT.png not found"):
        ksdd2_split(root)
    with pytest.raises(SourceError, match="not a KolektorSDD2 folder"):
        ksdd2_split(root / "test")
    with pytest.raises(SourceError, match="train_fraction applies to mtd only"):
        parse_dataset_spec(f"ksdd2:{root}?train_fraction=0.5")


@pytest.mark.parametrize("suffix, message", [
    ("?split=val", "split must be one of train, test, labelled, got 'val'"),
    ("?split=labelled", "split=labelled needs labelled=N"),
    ("?labelled=two", "seed and labelled must be integers"),
    ("?seeds=1", "unknown dataset option 'seeds'"),
    ("?train_fraction=1.5", r"train_fraction must be in \(0, 1\)"),
])
def test_bad_dataset_spec_is_named(mtd, suffix, message):
    with pytest.raises(SourceError, match=message):
        parse_dataset_spec(f"mtd:{mtd}{suffix}")


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(SourceError, match="dataset folder .*nowhere.* not found"):
        open_sources(f"mtd:{tmp_path / 'nowhere'}")
    (tmp_path / "x").mkdir()
    with pytest.raises(SourceError, match="not an MTD folder"):
        dataset_records(parse_dataset_spec(f"mtd:{tmp_path / 'x'}"))


def test_labelled_anomalies_are_held_out_of_the_test_split(mtd):
    spec = f"mtd:{mtd}?labelled=3&seed=2"
    labelled = dataset_records(parse_dataset_spec(spec, default_split="labelled"))
    test = dataset_records(parse_dataset_spec(spec))
    _, full_test = mtd_split(mtd, seed=2)
    assert [r.category for r in labelled] == ["MT_Blowhole"] * 3 + ["MT_Crack"] * 3
    assert {r.path for r in labelled}.isdisjoint({r.path for r in test})
    assert {r.path for r in labelled} | {r.path for r in test} == {r.path for r in full_test}
    assert labelled == dataset_records(parse_dataset_spec(spec, default_split="labelled"))  # seeded
    assert dataset_records(parse_dataset_spec(f"mtd:{mtd}?split=train&labelled=3&seed=2")) == mtd_split(mtd, seed=2)[0]
    (stream,) = open_sources(spec.replace("?", "?split=labelled&"))
    assert stream.stream_id == "labelled" and stream.frame_count == 6

    examples = labelled_examples([spec.replace("?", "?split=labelled&")], 64, 3)
    assert examples.images.shape == (6, 3, 64, 64) and examples.images.dtype == np.uint8
    assert examples.masks.shape == (6, 64, 64) and 0 < examples.masks.mean() < 0.5
    assert examples.masks.min() >= 0 and examples.masks.max() <= 1 and examples.has_mask.all()
    with pytest.raises(SourceError, match="labelled anomalies come from a dataset spec with split=labelled"):
        labelled_examples([f"mtd:{mtd}?split=test&labelled=3"], 64, 3)
    with pytest.raises(SourceError, match="split=labelled needs labelled=N"):
        labelled_examples([f"mtd:{mtd}"], 64, 3)
    with pytest.raises(SourceError, match="defect type 'MT_Crack' has 57 images: cannot hold 60 out"):
        dataset_records(parse_dataset_spec(f"mtd:{mtd}?labelled=60"))
