"""Evaluate a store of still-image scores against the dataset's labels and masks.

Each stream of the store lists its image files (``items``) and the dataset spec it came from, so
labels and masks are found again from the dataset layout. Stored maps (model resolution) are
resized to each image's own size before pixel metrics. Metrics are pooled over the whole test
split and per defect class (that class's images + the normal test images).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from ..datasets.layouts import ImageRecord
from ..datasets.specs import (
    dataset_records,
    is_dataset_spec,
    parse_dataset_spec,
    read_mask,
)
from ..errors import AnomstreamError, UndefinedMetricError
from ..store import open_results
from .image_metrics import (
    image_auroc,
    image_average_precision,
    pixel_auroc,
    pro_score,
)


@dataclass
class ScoredImage:
    record: ImageRecord
    score: float
    anomaly_map: np.ndarray  # at the image's own size
    mask: np.ndarray  # bool, image size


@dataclass
class StillEvaluation:
    pooled: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    images: int = 0
    normal_images: int = 0
    anomalous_without_mask: list[str] = field(default_factory=list)  # defect-class images, empty mask

    def to_dict(self) -> dict:
        return {"pooled": self.pooled, "per_class": self.per_class, "images": self.images,
                "normal_images": self.normal_images, "anomalous_images_without_mask": self.anomalous_without_mask}


def _records_by_path(spec: str, moved_root: str | None) -> dict[str, ImageRecord]:
    """The dataset's records keyed by the path the store recorded; ``moved_root``: the dataset's
    folder now, when it is no longer where it was scored."""
    parsed = parse_dataset_spec(spec, check_root=moved_root is None)
    if moved_root is None:
        return {str(r.path): r for r in dataset_records(parsed)}
    records = dataset_records(replace(parsed, root=Path(moved_root)))
    return {str(parsed.root / r.path.relative_to(moved_root)): r for r in records}


def scored_images(store: str | Path, dataset_root: str | None = None) -> list[ScoredImage]:
    """Every valid image of the store with its record, score, map and mask at its own size."""
    root = open_results(store, maps=True)
    images = []
    records: dict[str, dict[str, ImageRecord]] = {}  # dataset spec -> its records by stored path
    for stream_id in sorted(root.group_keys()):
        group = root[stream_id]
        spec = str(group.attrs.get("source", ""))
        if not is_dataset_spec(spec) or "items" not in group.attrs:
            raise AnomstreamError(f"{store}: stream {stream_id!r} was not scored from a labelled dataset "
                                  f"(source {spec!r}); score a dataset spec such as mtd:ROOT or mvtec:CATEGORY")
        if spec not in records:
            records[spec] = _records_by_path(spec, dataset_root)
        by_path = records[spec]
        items = group.attrs["items"]
        valid = group["valid"][:]
        scores = group["score"][:][valid]
        maps = group["map"][:][valid]
        for index, score, score_map in zip(group["frame_index"][:][valid], scores, maps):
            record = by_path.get(items[index])
            if record is None:
                raise AnomstreamError(f"{store}: {items[index]} is not in the dataset {spec}")
            shape = _image_shape(record)
            resized = cv2.resize(score_map.astype(np.float32), shape[::-1], interpolation=cv2.INTER_LINEAR)
            images.append(ScoredImage(record, float(score), resized, read_mask(record, shape)))
    if not images:
        raise AnomstreamError(f"{store}: store holds no scored images")
    return images


def _image_shape(record: ImageRecord) -> tuple[int, int]:
    image = cv2.imread(str(record.path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise AnomstreamError(f"{record.path}: cannot decode image")
    return image.shape[:2]


def _metrics(images: list[ScoredImage]) -> dict[str, float]:
    out: dict[str, float] = {}
    labels = np.array([i.record.anomalous for i in images])
    scores = np.array([i.score for i in images])
    maps, masks = [i.anomaly_map for i in images], [i.mask for i in images]
    for name, compute in (("image_auroc", lambda: image_auroc(scores, labels)),
                          ("image_ap", lambda: image_average_precision(scores, labels)),
                          ("pixel_auroc", lambda: pixel_auroc(maps, masks)),
                          ("pro", lambda: pro_score(maps, masks))):
        try:
            out[name] = compute()
        except UndefinedMetricError:
            continue
    return out


def evaluate_stills(store: str | Path, dataset_root: str | None = None) -> StillEvaluation:
    """Image AUROC / AP, pixel AUROC and PRO pooled and per defect class. Images of a defect class
    whose mask is empty (or missing) stay in every metric (anomalous for the image metrics, all
    pixels normal for the pixel metrics) and are listed in ``anomalous_without_mask``."""
    images = scored_images(store, dataset_root)
    normal = [i for i in images if not i.record.anomalous]
    classes = list(dict.fromkeys(i.record.category for i in images if i.record.anomalous))
    per_class = {c: {**_metrics(normal + [i for i in images if i.record.category == c]),
                     "images": sum(i.record.category == c for i in images)} for c in classes}
    pooled = _metrics(images)
    if per_class:
        for name in ("image_auroc", "image_ap", "pixel_auroc", "pro"):
            values = [m[name] for m in per_class.values() if name in m]
            if values:
                pooled[f"mean_class_{name}"] = float(np.mean(values))
    without_mask = [str(i.record.path) for i in images if i.record.anomalous and not i.mask.any()]
    return StillEvaluation(pooled, per_class, len(images), len(normal), without_mask)
