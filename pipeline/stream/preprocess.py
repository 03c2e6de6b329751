"""Resize and colour conversion of decoded frames, done once per frame before windowing."""

from __future__ import annotations

import cv2
import numpy as np


def prepare_frame(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) or grey (H, W) -> uint8 (channels, size, size); channels 1 = grey, 3 = RGB."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image.ndim == 2:  # decoded grey (Source.use_grey)
        image = image if channels == 1 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)  # before resizing: a third of the pixels to resize
    if image.shape[:2] != (size, size):
        interpolation = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interpolation)
    return image[None] if channels == 1 else np.ascontiguousarray(image.transpose(2, 0, 1))
