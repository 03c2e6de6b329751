"""Folder layouts of labelled still-image datasets -> (train, test) lists of :class:`ImageRecord`.

- ``mtd``: MTD, ``MT_*/Imgs/X.jpg`` + mask ``X.png``; DS2 protocol (seeded share of defect-free
  images train; the rest and every defective image test).
- ``mvtec``: MVTec AD category, ``train/good``, ``test/<type>``, ``ground_truth/<type>/<name>_mask.png``.
- ``mvtec_loco``: MVTec LOCO AD category, ``train/good``, ``test/{good,logical_anomalies,
  structural_anomalies}``, ``ground_truth/<type>/<name>/*.png`` (one mask per defect, united);
  ``validation/good`` is not used.
- ``ksdd2``: KolektorSDD2, ``train/X.png`` + ``train/X_GT.png``, likewise ``test/``; an image is
  defective when its mask has defect pixels. Unsupervised protocol: the defect-free ``train``
  images train, all of ``test`` tests.

Test records come grouped by class, the normal class first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SourceError
from ..files import list_images
from .label_files import read_mask_file

MTD_NORMAL = "MT_Free"


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    category: str  # the normal class name or the defect type
    anomalous: bool
    mask_path: Path | None  # a mask file or a folder of masks to unite; None: no defect pixels


Split = tuple[list[ImageRecord], list[ImageRecord]]


def mtd_split(root: Path, seed: int = 0, train_fraction: float = 0.8) -> Split:
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


def _mvtec_like_split(category: Path, layout: str, mask_of: Callable[[Path, Path], Path]) -> Split:
    """``train/good`` and ``test/<type>`` (good first); ``mask_of(type folder, image)`` names a defect's mask."""
    if not (category / "train" / "good").is_dir() or not (category / "test").is_dir():
        raise SourceError(f"{category}: not an {layout} category folder (needs train/good and test/)")
    train = [ImageRecord(p, "good", False, None) for p in list_images(category / "train" / "good")]
    test = []
    types = sorted(p for p in (category / "test").iterdir() if p.is_dir())
    for folder in sorted(types, key=lambda p: (p.name != "good", p.name)):
        for path in list_images(folder):
            anomalous = folder.name != "good"
            mask = mask_of(category / "ground_truth" / folder.name, path) if anomalous else None
            if mask is not None and not mask.exists():
                raise SourceError(f"{path}: ground-truth mask {mask} not found")
            test.append(ImageRecord(path, folder.name, anomalous, mask))
    return train, test


def mvtec_split(category: Path) -> Split:
    return _mvtec_like_split(category, "MVTec AD", lambda truth, image: truth / f"{image.stem}_mask.png")


def mvtec_loco_split(category: Path) -> Split:
    train, test = _mvtec_like_split(category, "MVTec LOCO", lambda truth, image: truth / image.stem)
    for record in test:
        if record.mask_path is not None and not any(record.mask_path.glob("*.png")):
            raise SourceError(f"{record.path}: ground-truth folder {record.mask_path} holds no mask")
    return train, test


def ksdd2_split(root: Path) -> Split:
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise SourceError(f"{root}: not a KolektorSDD2 folder (needs train/ and test/)")
    train = [r for r in _ksdd2_records(root / "train") if not r.anomalous]
    test = _ksdd2_records(root / "test")
    return train, sorted(test, key=lambda r: r.anomalous)


def _ksdd2_records(folder: Path) -> list[ImageRecord]:
    records = []
    for path in list_images(folder):
        if path.stem.endswith("_GT"):
            continue
        mask_path = path.with_name(f"{path.stem}_GT{path.suffix}")
        if not mask_path.is_file():
            raise SourceError(f"{path}: ground-truth mask {mask_path.name} not found")
        anomalous = bool(read_mask_file(mask_path).any())
        records.append(ImageRecord(path, "defect" if anomalous else "good", anomalous, mask_path if anomalous else None))
    return records


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


LAYOUT_SPLITS: dict[str, Callable[..., Split]] = {
    "mtd": mtd_split, "mvtec": mvtec_split, "mvtec_loco": mvtec_loco_split, "ksdd2": ksdd2_split}
