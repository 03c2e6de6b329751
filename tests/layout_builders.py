"""Dataset folders in the official MVTec AD, MVTec LOCO and KolektorSDD2 layouts, built from real MTD
images and masks (no such dataset ships with the repository)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np


def mtd_images(mtd: Path, name: str, count: int) -> list[Path]:
    return sorted((mtd / name / "Imgs").glob("*.jpg"))[:count]


def mvtec_from_mtd(mtd: Path, root: Path) -> Path:
    """``tile``: 4 train, 1 good test, 3 crack tests with ``<name>_mask.png``."""
    category = root / "tile"
    free, cracks = mtd_images(mtd, "MT_Free", 5), mtd_images(mtd, "MT_Crack", 3)
    for folder in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (category / folder).mkdir(parents=True)
    for k, path in enumerate(free[:4]):
        shutil.copy(path, category / "train" / "good" / f"{k:03d}.png")
    shutil.copy(free[4], category / "test" / "good" / "000.png")
    for k, path in enumerate(cracks):
        shutil.copy(path, category / "test" / "crack" / f"{k:03d}.png")
        shutil.copy(path.with_suffix(".png"), category / "ground_truth" / "crack" / f"{k:03d}_mask.png")
    return category


def loco_from_mtd(mtd: Path, root: Path) -> Path:
    """``tiles``: 4 train, 1 validation, 2 good tests; 2 logical anomalies (blowholes) whose mask is split
    into two files (upper and lower half), 1 structural anomaly (crack) with one mask."""
    category = root / "tiles"
    free = mtd_images(mtd, "MT_Free", 7)
    defects = {"logical_anomalies": mtd_images(mtd, "MT_Blowhole", 2), "structural_anomalies": mtd_images(mtd, "MT_Crack", 1)}
    for folder in ("train/good", "validation/good", "test/good"):
        (category / folder).mkdir(parents=True)
    for k, path in enumerate(free[:4]):
        shutil.copy(path, category / "train" / "good" / f"{k:03d}.png")
    shutil.copy(free[4], category / "validation" / "good" / "000.png")
    for k, path in enumerate(free[5:]):
        shutil.copy(path, category / "test" / "good" / f"{k:03d}.png")
    for kind, paths in defects.items():
        (category / "test" / kind).mkdir()
        for k, path in enumerate(paths):
            shutil.copy(path, category / "test" / kind / f"{k:03d}.png")
            truth = category / "ground_truth" / kind / f"{k:03d}"
            truth.mkdir(parents=True)
            mask = cv2.imread(str(path.with_suffix(".png")), cv2.IMREAD_GRAYSCALE)
            if kind == "logical_anomalies":
                upper, lower = mask.copy(), mask.copy()
                upper[len(mask) // 2:], lower[:len(mask) // 2] = 0, 0
                cv2.imwrite(str(truth / "000.png"), upper)
                cv2.imwrite(str(truth / "001.png"), lower)
            else:
                cv2.imwrite(str(truth / "000.png"), mask)
    return category


def ksdd2_from_mtd(mtd: Path, root: Path) -> Path:
    """train: 4 defect-free + 1 crack (excluded from training); test: 2 defect-free, then 2 blowholes
    whose masks are stored as 0/1 (not 0/255); images numbered as KSDD2's, ``X.png`` + ``X_GT.png``."""
    dataset = root / "ksdd2"
    free, cracks, holes = (mtd_images(mtd, "MT_Free", 6), mtd_images(mtd, "MT_Crack", 1),
                           mtd_images(mtd, "MT_Blowhole", 2))
    layout = {"train": [*free[:2], cracks[0], *free[2:4]], "test": [holes[0], free[4], holes[1], free[5]]}
    for split, paths in layout.items():
        (dataset / split).mkdir(parents=True)
        for k, path in enumerate(paths):
            image = cv2.imread(str(path))
            mask_file = path.with_suffix(".png")
            mask = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE) if mask_file.is_file() else None
            mask = np.zeros(image.shape[:2], np.uint8) if mask is None else mask
            if split == "test":
                mask = (mask > 127).astype(np.uint8)
            cv2.imwrite(str(dataset / split / f"{10000 + k}.png"), image)
            cv2.imwrite(str(dataset / split / f"{10000 + k}_GT.png"), mask)
    return dataset
