"""Still-image datasets: the MTD split (DS2 protocol), the MVTec AD layout, masks, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.datasets import (dataset_records, labelled_examples, mtd_split, mvtec_split, parse_dataset_spec,
                               read_mask)
from pipeline.errors import SourceError
from pipeline.sources import open_sources


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


def _mvtec_from_mtd(mtd: Path, root: Path) -> Path:
    """An MVTec AD category folder built from real MTD images."""
    category = root / "tile"
    free = sorted((mtd / "MT_Free" / "Imgs").glob("*.jpg"))
    cracks = sorted((mtd / "MT_Crack" / "Imgs").glob("*.jpg"))[:3]
    for folder in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (category / folder).mkdir(parents=True)
    for k, path in enumerate(free[:4]):
        shutil.copy(path, category / "train" / "good" / f"{k:03d}.png")
    shutil.copy(free[4], category / "test" / "good" / "000.png")
    for k, path in enumerate(cracks):
        shutil.copy(path, category / "test" / "crack" / f"{k:03d}.png")
        shutil.copy(path.with_suffix(".png"), category / "ground_truth" / "crack" / f"{k:03d}_mask.png")
    return category


def test_mvtec_layout(mtd, tmp_path):
    category = _mvtec_from_mtd(mtd, tmp_path)
    train, test = mvtec_split(category)
    assert [r.path.name for r in train] == ["000.png", "001.png", "002.png", "003.png"]
    assert [(r.category, r.path.name, r.anomalous) for r in test] == [
        ("good", "000.png", False), ("crack", "000.png", True), ("crack", "001.png", True), ("crack", "002.png", True)]
    assert test[1].mask_path == category / "ground_truth" / "crack" / "000_mask.png"
    assert [s.stream_id for s in open_sources(f"mvtec:{category}")] == ["good", "crack"]
    (category / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(SourceError, match="001.png: ground-truth mask .*001_mask.png not found"):
        mvtec_split(category)


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
