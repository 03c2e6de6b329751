"""Still-image datasets with labels and masks: MVTec AD layout and MTD (DS2 protocol).

A dataset spec names a layout, a root and a split: ``mtd:ROOT``, ``mtd:ROOT?split=train&seed=0``,
``mvtec:CATEGORY_FOLDER?split=test``. Scoring defaults to the test split, training to the train
split. Each split is a list of :class:`ImageRecord`; the test split is grouped into one stream per
class (``good`` / the normal class, then each defect type), so per-class metrics read straight
off the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import cv2
import numpy as np

from pipeline.errors import SourceError
from pipeline.sources import ImageListSource, list_images

LAYOUTS = ("mtd", "mvtec")
MTD_NORMAL = "MT_Free"


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    category: str  # the normal class name or the defect type
    anomalous: bool
    mask_path: Path | None  # None: no defect pixels (a normal image)


@dataclass(frozen=True)
class DatasetSpec:
    layout: str
    root: Path
    split: str = "test"
    seed: int = 0
    train_fraction: float = 0.8


def is_dataset_spec(spec: str) -> bool:
    return spec.split(":", 1)[0] in LAYOUTS and ":" in spec


def parse_dataset_spec(spec: str, default_split: str = "test", check_root: bool = True) -> DatasetSpec:
    layout, rest = spec.split(":", 1)
    root, _, query = rest.partition("?")
    options = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(options) - {"split", "seed", "train_fraction"}
    if unknown:
        raise SourceError(f"{spec}: unknown dataset option {sorted(unknown)[0]!r}; known: split, seed, train_fraction")
    split = options.get("split", default_split)
    if split not in ("train", "test"):
        raise SourceError(f"{spec}: split must be 'train' or 'test', got {split!r}")
    try:
        seed = int(options.get("seed", 0))
        fraction = float(options.get("train_fraction", 0.8))
    except ValueError:
        raise SourceError(f"{spec}: seed must be an integer and train_fraction a number") from None
    if not 0 < fraction < 1:
        raise SourceError(f"{spec}: train_fraction must be in (0, 1), got {fraction}")
    path = Path(root)
    if check_root and not path.is_dir():
        raise SourceError(f"{spec}: dataset folder {root!r} not found")
    return DatasetSpec(layout, path, split, seed, fraction)


def mtd_split(root: Path, seed: int = 0, train_fraction: float = 0.8) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """MTD (``MT_*/Imgs/X.jpg`` + mask ``X.png``): a seeded ``train_fraction`` of the defect-free
    images train; the other defect-free images and every defective image test."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and (p / "Imgs").is_dir())
    if not any(p.name == MTD_NORMAL for p in classes):
        raise SourceError(f"{root}: not an MTD folder (no {MTD_NORMAL}/Imgs)")
    train: list[ImageRecord] = []
    test: list[ImageRecord] = []
    for folder in classes:
        images = [p for p in list_images(folder / "Imgs") if p.suffix.lower() == ".jpg"]
        records = [ImageRecord(p, folder.name, folder.name != MTD_NORMAL, _existing(p.with_suffix(".png")))
                   for p in images]
        if folder.name == MTD_NORMAL:
            order = np.random.default_rng(seed).permutation(len(records))
            cut = int(len(records) * train_fraction)
            train = [records[i] for i in sorted(order[:cut])]
            test = [records[i] for i in sorted(order[cut:])] + test
        else:
            test += records
    return train, test


def mvtec_split(category: Path) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """MVTec AD category folder: ``train/good``; ``test/<type>``; ``ground_truth/<type>/<name>_mask.png``."""
    if not (category / "train" / "good").is_dir() or not (category / "test").is_dir():
        raise SourceError(f"{category}: not an MVTec AD category folder (needs train/good and test/)")
    train = [ImageRecord(p, "good", False, None) for p in list_images(category / "train" / "good")]
    test = []
    types = sorted(p for p in (category / "test").iterdir() if p.is_dir())
    for folder in sorted(types, key=lambda p: (p.name != "good", p.name)):
        for path in list_images(folder):
            anomalous = folder.name != "good"
            mask = category / "ground_truth" / folder.name / f"{path.stem}_mask.png"
            if anomalous and not mask.is_file():
                raise SourceError(f"{path}: ground-truth mask {mask} not found")
            test.append(ImageRecord(path, folder.name, anomalous, mask if anomalous else None))
    return train, test


def dataset_records(spec: DatasetSpec) -> list[ImageRecord]:
    train, test = mtd_split(spec.root, spec.seed, spec.train_fraction) if spec.layout == "mtd" else mvtec_split(spec.root)
    return train if spec.split == "train" else test


def read_mask(record: ImageRecord, shape: tuple[int, int]) -> np.ndarray:
    """bool (H, W) defect mask of ``record`` for an image of ``shape``; masks are thresholded at > 127."""
    if record.mask_path is None:
        return np.zeros(shape, bool)
    mask = cv2.imread(str(record.mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise SourceError(f"{record.mask_path}: cannot decode mask")
    if mask.shape != tuple(shape):
        raise SourceError(f"{record.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                          f"its image {record.path.name} is {shape[1]}x{shape[0]}")
    return mask > 127


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def dataset_sources(spec: str, default_split: str = "test") -> list[ImageListSource]:
    """One source per class of the split (train: a single stream)."""
    parsed = parse_dataset_spec(spec, default_split)
    records = dataset_records(parsed)
    if parsed.split == "train":
        return [ImageListSource([r.path for r in records], "train", spec)]
    categories = list(dict.fromkeys(r.category for r in records))
    return [ImageListSource([r.path for r in records if r.category == c], c, f"{spec}#{c}") for c in categories]

