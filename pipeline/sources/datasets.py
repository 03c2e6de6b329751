"""A labelled still dataset spec as sources: one stream per class of its split."""

from __future__ import annotations

from ..datasets.specs import dataset_records, parse_dataset_spec
from .folders import ImageListSource


def dataset_sources(spec: str, default_split: str = "test") -> list[ImageListSource]:
    """One source per class of the split (train and labelled: a single stream); a test split's
    anomaly classes are not scene-checked (:attr:`Source.scene_checked`)."""
    parsed = parse_dataset_spec(spec, default_split)
    records = dataset_records(parsed)
    if parsed.split != "test":
        return [ImageListSource([r.path for r in records], parsed.split, spec)]
    sources = []
    for category in dict.fromkeys(r.category for r in records):
        source = ImageListSource([r.path for r in records if r.category == category], category, spec)
        # every image of it anomalous: most above the threshold says the model finds them, not a misfit
        source.scene_checked = not all(r.anomalous for r in records if r.category == category)
        sources.append(source)
    return sources
