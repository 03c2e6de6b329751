"""Labelled anomalies for the models that learn from a few (ADTR+): images and masks, prepared."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..datasets.specs import (
    dataset_records,
    is_dataset_spec,
    parse_dataset_spec,
    read_mask,
)
from ..errors import SourceError
from ..files import read_image
from ..stream.preprocess import prepare_frame


@dataclass
class LabelledExamples:
    """Labelled anomalies prepared for a model."""

    images: np.ndarray  # uint8 (N, C, size, size)
    masks: np.ndarray  # float32 (N, size, size): share of each pixel inside the defect
    has_mask: np.ndarray  # bool (N,): False = an image-level label only (no mask file)


def labelled_examples(specs: list[str], size: int, channels: int) -> LabelledExamples:
    """The defective images of each spec's ``labelled`` split, resized for the model with their masks."""
    images, masks, has_mask = [], [], []
    for spec in specs:
        parsed = parse_dataset_spec(spec, default_split="labelled") if is_dataset_spec(spec) else None
        if parsed is None or parsed.split != "labelled":
            raise SourceError(f"{spec}: labelled anomalies come from a dataset spec with split=labelled&labelled=N")
        for record in dataset_records(parsed):
            image = read_image(record.path, grey=channels == 1)
            images.append(prepare_frame(image, size, channels))
            mask = read_mask(record, image.shape[:2]).astype(np.float32)
            masks.append(cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA))
            has_mask.append(record.mask_path is not None)
    return LabelledExamples(np.stack(images), np.stack(masks), np.array(has_mask))
