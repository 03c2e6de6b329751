"""Ground-truth loaders for the video benchmarks: per-stream frame labels and pixel masks.

Each loader returns ``{stream_id: labels}`` with stream ids as the sources name them (the clip
folder or video stem), so they line up with the groups of a result store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import AnomstreamError
from pipeline.sources import list_images, numeric_sort_key


def ped2_frame_labels(root: str | Path) -> dict[str, np.ndarray]:
    """UCSD Ped2: ``frame_labels_ped2.npy`` (clips concatenated in order) split by the clip lengths
    of ``testing/frames/NN``."""
    root = Path(root)
    labels_path = root / "frame_labels_ped2.npy"
    frames_root = root / "testing" / "frames"
    if not labels_path.is_file() or not frames_root.is_dir():
        raise AnomstreamError(f"{root}: expected frame_labels_ped2.npy and testing/frames/ (UCSD Ped2 layout)")
    labels = np.load(labels_path).ravel().astype(np.int8)
    clips = sorted((p for p in frames_root.iterdir() if p.is_dir()), key=numeric_sort_key)
    lengths = [len(list_images(c)) for c in clips]
    if sum(lengths) != len(labels):
        raise AnomstreamError(f"{labels_path}: {len(labels)} labels but {sum(lengths)} test frames")
    bounds = np.cumsum([0, *lengths])
    return {clip.name: labels[a:b] for clip, a, b in zip(clips, bounds[:-1], bounds[1:])}


def ped2_masks(root: str | Path, stream_id: str) -> Iterator[np.ndarray]:
    """Pixel masks of Ped2 test clip ``stream_id`` (e.g. '01'), in frame order, as bool (H, W)."""
    import cv2

    folder = Path(root) / "testing" / "gt" / f"Test{int(stream_id):03d}_gt"
    if not folder.is_dir():
        raise AnomstreamError(f"{folder}: no pixel masks for stream {stream_id!r} (UCSD Ped2 layout)")
    paths = [p for p in sorted(folder.iterdir(), key=numeric_sort_key) if p.suffix.lower() in (".png", ".bmp")]
    if not paths:
        raise AnomstreamError(f"{folder}: no mask images")
    for path in paths:
        yield cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127


def avenue_masks(mat_path: str | Path) -> np.ndarray:
    """CUHK Avenue ``N_label.mat``: (frames, H, W) bool masks."""
    from scipy.io import loadmat

    cells = loadmat(str(mat_path))["volLabel"]
    return np.stack([np.asarray(m, dtype=bool) for m in cells.ravel()])


def avenue_frame_labels(folder: str | Path) -> dict[str, np.ndarray]:
    """Avenue ``testing_label_mask/N_label.mat`` files -> stream 'NN' (video stem) labels = mask.any()."""
    files = sorted(Path(folder).glob("*_label.mat"), key=numeric_sort_key)
    if not files:
        raise AnomstreamError(f"{folder}: no *_label.mat files (CUHK Avenue layout)")
    labels = {}
    for file in files:
        masks = avenue_masks(file)
        labels[f"{int(file.name.split('_')[0]):02d}"] = masks.reshape(len(masks), -1).any(1).astype(np.int8)
    return labels


def shanghaitech_frame_labels(folder: str | Path) -> dict[str, np.ndarray]:
    """ShanghaiTech ``test_frame_mask/<video>.npy`` per-video 0/1 frame masks."""
    files = sorted(Path(folder).glob("*.npy"), key=numeric_sort_key)
    if not files:
        raise AnomstreamError(f"{folder}: no per-video .npy frame masks (ShanghaiTech layout)")
    return {f.stem: np.load(f).ravel().astype(np.int8) for f in files}


LOADERS = {"ped2": ped2_frame_labels, "avenue": avenue_frame_labels, "shanghaitech": shanghaitech_frame_labels}


def load_frame_labels(dataset: str, path: str | Path) -> dict[str, np.ndarray]:
    if dataset not in LOADERS:
        raise AnomstreamError(f"unknown dataset {dataset!r}; known: {', '.join(LOADERS)}")
    if not Path(path).exists():
        raise AnomstreamError(f"{path}: no such labels path")
    return LOADERS[dataset](path)
