"""Still-image datasets with labels and masks, named by a spec: layout, root and split.

``mtd:ROOT``, ``mtd:ROOT?split=train&seed=0``, ``mvtec:CATEGORY_FOLDER?split=test``,
``mvtec_loco:CATEGORY_FOLDER``, ``ksdd2:ROOT`` (layouts: ``pipeline/datasets/layouts.py``). Scoring
defaults to the test split, training to the train split. ``labelled=N`` holds a seeded N defective
images of each defect type out of the test split as the ``labelled`` split: the few labelled
anomalies a model may train on (ADTR's anomaly-available variant); the test split of the same spec
never contains them. Each split is a list of :class:`ImageRecord`, grouped by class (``good`` / the
normal class, then each defect type), so per-class metrics read straight off the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np

from ..errors import SourceError
from .label_files import read_mask_file
from .layouts import LAYOUT_SPLITS, ImageRecord, mtd_split

LAYOUTS = tuple(LAYOUT_SPLITS)

SPLITS = ("train", "test", "labelled")

OPTIONS = ("split", "seed", "train_fraction", "labelled")


@dataclass(frozen=True)
class DatasetSpec:
    layout: str
    root: Path
    split: str = "test"
    seed: int = 0
    train_fraction: float = 0.8
    labelled: int = 0  # defective images per type held out of test for training


def is_dataset_spec(spec: str) -> bool:
    return spec.split(":", 1)[0] in LAYOUTS and ":" in spec


def parse_dataset_spec(spec: str, default_split: str = "test", check_root: bool = True) -> DatasetSpec:
    layout, rest = spec.split(":", 1)
    # the root is a path: it may hold "?" itself, so options are split off only when it is not a path
    root, _, query = (rest, "", "") if Path(rest).exists() or "?" not in rest else rest.rpartition("?")
    options = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise SourceError(f"{spec}: unknown dataset option {min(unknown)!r}; known: {', '.join(OPTIONS)}")
    split = options.get("split", default_split)
    if split not in SPLITS:
        raise SourceError(f"{spec}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    try:
        seed = int(options.get("seed", 0))
        fraction = float(options.get("train_fraction", 0.8))
        labelled = int(options.get("labelled", 0))
    except ValueError:
        raise SourceError(f"{spec}: seed and labelled must be integers and train_fraction a number") from None
    if not 0 < fraction < 1:
        raise SourceError(f"{spec}: train_fraction must be in (0, 1), got {fraction}")
    if "train_fraction" in options and layout != "mtd":
        raise SourceError(f"{spec}: train_fraction applies to mtd only ({layout} has its own train split)")
    if labelled < 0 or (split == "labelled" and labelled == 0):
        raise SourceError(f"{spec}: split=labelled needs labelled=N with N >= 1 defective images per type")
    path = Path(root)
    if check_root and not path.is_dir():
        raise SourceError(f"{spec}: dataset folder {root!r} not found")
    return DatasetSpec(layout, path, split, seed, fraction, labelled)


def hold_out_labelled(test: list[ImageRecord], per_type: int, seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(labelled, rest): a seeded ``per_type`` defective images of every defect type, and the test
    records without them (order kept)."""
    rng = np.random.default_rng(seed)
    chosen: set[Path] = set()
    for category in dict.fromkeys(r.category for r in test if r.anomalous):
        records = [r for r in test if r.category == category]
        if len(records) <= per_type:
            raise SourceError(f"defect type {category!r} has {len(records)} images: cannot hold {per_type} "
                              f"out as labelled anomalies and still test it")
        chosen.update(records[i].path for i in rng.choice(len(records), per_type, replace=False))
    return [r for r in test if r.path in chosen], [r for r in test if r.path not in chosen]


def dataset_records(spec: DatasetSpec) -> list[ImageRecord]:
    if spec.layout == "mtd":
        train, test = mtd_split(spec.root, spec.seed, spec.train_fraction)
    else:
        train, test = LAYOUT_SPLITS[spec.layout](spec.root)
    if spec.split == "train":
        return train
    labelled, rest = hold_out_labelled(test, spec.labelled, spec.seed) if spec.labelled else ([], test)
    return labelled if spec.split == "labelled" else rest


def read_mask(record: ImageRecord, shape: tuple[int, int]) -> np.ndarray:
    """bool (H, W) defect mask of ``record`` for an image of ``shape`` (a folder of masks: their union).

    Masks are read by value (``pipeline.datasets.label_files.defect_pixels``: 0/1, 0/255, palette, 16-bit,
    colour). Raises :class:`~pipeline.errors.LabelFileError` naming an empty or unreadable mask file,
    :class:`SourceError` for a mask of another size than its image."""
    if record.mask_path is None:
        return np.zeros(shape, bool)
    files = sorted(record.mask_path.glob("*.png")) if record.mask_path.is_dir() else [record.mask_path]
    union = np.zeros(shape, bool)
    for path in files:
        mask = read_mask_file(path)
        if mask.shape != tuple(shape):
            raise SourceError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                              f"its image {record.path.name} is {shape[1]}x{shape[0]}")
        union |= mask
    return union
