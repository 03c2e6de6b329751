"""A labelled still dataset spec as sources: one stream per class of its split."""

from __future__ import annotations

from ..datasets.specs import dataset_records, parse_dataset_spec
from .folders import ImageListSource


def dataset_sources(spec: str, default_split: str = "test") -> list[ImageListSource]:
    """One source per class of the split (train and labelled: a single stream)."""
    parsed = parse_dataset_spec(spec, default_split)
    records = dataset_records(parsed)
    if parsed.split != "test":
        return [ImageListSource([r.path for r in records], parsed.split, spec)]
    categories = list(dict.fromkeys(r.category for r in records))
    return [ImageListSource([r.path for r in records if r.category == c], c, spec) for c in categories]
