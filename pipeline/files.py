"""Image files on disk: which files are images, their numeric order, reading one as RGB.

The bottom of the house: sources and datasets both use it without importing each other.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .errors import SourceError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def numeric_sort_key(path: Path) -> tuple:
    """Natural order: 1.jpg < 2.jpg < 10.jpg, frame9 < frame10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def list_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
                  key=numeric_sort_key)


def files_fingerprint(paths: list[Path]) -> dict[str, int]:
    """What tells whether files changed since a stream was scored from them, without reading them:
    ``files`` (count), ``bytes`` (total size) and ``mtime_ns`` (newest modification). Files that
    vanished count as absent."""
    sizes, newest = [], 0
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        sizes.append(stat.st_size)
        newest = max(newest, stat.st_mtime_ns)
    return {"files": len(sizes), "bytes": sum(sizes), "mtime_ns": newest}


def read_image(path: Path, grey: bool = False) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB, or with ``grey`` (H, W) (OpenCV's IMREAD_GRAYSCALE: a
    JPEG's luma as libjpeg decodes it). Raises SourceError naming the file when it cannot be decoded."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"{path}: cannot decode image")
    return image if grey else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
