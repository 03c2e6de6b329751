"""Ground-truth loaders for the video benchmarks: per-stream frame labels and pixel masks.

Each frame-label loader returns ``{stream_id: labels}`` with stream ids as the sources name them
(the clip folder or video stem), so they line up with the groups of a result store; each mask
reader (``MASK_READERS``) gives the bool (H, W) masks of one stream in frame order. Files are read
by content and masks by value (``pipeline.datasets.label_files``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import AnomstreamError
from ..files import list_images, numeric_sort_key
from .label_files import read_array, read_mask_file, read_masks

MASK_IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")


def frame_labels(values: np.ndarray) -> np.ndarray:
    """int8 0/1 (frames,) from a label array of any dtype and coding (0/1, 0/255, bool): anomalous
    = non-zero, by value."""
    return (np.asarray(values).ravel() != 0).astype(np.int8)


def ped2_frame_labels(root: str | Path) -> dict[str, np.ndarray]:
    """UCSD Ped2: ``frame_labels_ped2.npy`` (clips concatenated in order) split by the clip lengths
    of ``testing/frames/NN``."""
    root = Path(root)
    labels_path = root / "frame_labels_ped2.npy"
    frames_root = root / "testing" / "frames"
    if not labels_path.is_file() or not frames_root.is_dir():
        raise AnomstreamError(f"{root}: expected frame_labels_ped2.npy and testing/frames/ (UCSD Ped2 layout)")
    labels = frame_labels(read_array(labels_path))
    clips = sorted((p for p in frames_root.iterdir() if p.is_dir()), key=numeric_sort_key)
    lengths = [len(list_images(c)) for c in clips]
    if sum(lengths) != len(labels):
        raise AnomstreamError(f"{labels_path}: {len(labels)} labels but {sum(lengths)} test frames")
    bounds = np.cumsum([0, *lengths])
    return {clip.name: labels[a:b] for clip, a, b in zip(clips, bounds[:-1], bounds[1:])}


def ped2_masks(root: str | Path, stream_id: str) -> Iterator[np.ndarray]:
    """Pixel masks of Ped2 test clip ``stream_id`` (e.g. '01'), in frame order, as bool (H, W).

    Raises :class:`AnomstreamError` when the clip has no mask folder or images, and
    :class:`~pipeline.errors.LabelFileError` naming a mask file that is empty or unreadable."""
    number = re.search(r"\d+$", stream_id)  # clip "01" or, as UCSD names them, "Test001"
    if number is None:
        raise AnomstreamError(f"stream {stream_id!r}: a Ped2 test clip is named by its number (01 or Test001)")
    folder = Path(root) / "testing" / "gt" / f"Test{int(number.group()):03d}_gt"
    if not folder.is_dir():
        raise AnomstreamError(f"{folder}: no pixel masks for stream {stream_id!r} (UCSD Ped2 layout)")
    paths = [p for p in sorted(folder.iterdir(), key=numeric_sort_key)
             if p.suffix.lower() in MASK_IMAGE_SUFFIXES and not p.name.startswith(".")]
    if not paths:
        raise AnomstreamError(f"{folder}: no mask images")
    for path in paths:
        yield read_mask_file(path)


def avenue_masks(label_path: str | Path) -> np.ndarray:
    """CUHK Avenue ``N_label.mat`` (MATLAB v5-v7.3, cell array ``volLabel`` of (H, W) masks) or
    ``N_label.npy`` ((frames, H, W)): bool (frames, H, W) masks. Raises :class:`LabelFileError`."""
    return read_masks(label_path, "volLabel")  # the variable name applies to .mat content only


def avenue_label_files(folder: str | Path) -> dict[str, Path]:
    """Stream id 'NN' (video stem) -> its ``N_label.mat`` or ``N_label.npy`` in ``testing_label_mask/``."""
    files: dict[str, Path] = {}
    for file in sorted(Path(folder).glob("*_label.*"), key=numeric_sort_key):
        number = file.name.split("_")[0]
        if file.suffix.lower() not in (".mat", ".npy") or not number.isdigit():
            continue
        stream_id = f"{int(number):02d}"
        if stream_id in files:
            raise AnomstreamError(f"{folder}: both {files[stream_id].name} and {file.name} label video {stream_id}")
        files[stream_id] = file
    if not files:
        raise AnomstreamError(f"{folder}: no N_label.mat or N_label.npy files (CUHK Avenue layout)")
    return files


def avenue_frame_labels(folder: str | Path) -> dict[str, np.ndarray]:
    """Avenue ``testing_label_mask/N_label.{mat,npy}`` files -> stream 'NN' labels = mask.any()."""
    labels = {}
    for stream_id, file in avenue_label_files(folder).items():
        masks = avenue_masks(file)
        labels[stream_id] = masks.reshape(len(masks), -1).any(1).astype(np.int8)
    return labels


def avenue_stream_masks(folder: str | Path, stream_id: str) -> np.ndarray:
    """bool (frames, H, W) masks of Avenue test video ``stream_id`` (e.g. '08')."""
    files = avenue_label_files(folder)
    if stream_id not in files:
        raise AnomstreamError(f"{folder}: no label file for stream {stream_id!r} (CUHK Avenue: N_label.mat)")
    return avenue_masks(files[stream_id])


def shanghaitech_frame_labels(folder: str | Path) -> dict[str, np.ndarray]:
    """ShanghaiTech ``test_frame_mask/<video>.npy`` per-video 0/1 frame masks."""
    files = sorted(Path(folder).glob("*.npy"), key=numeric_sort_key)
    if not files:
        raise AnomstreamError(f"{folder}: no per-video .npy frame masks (ShanghaiTech layout)")
    return {f.stem: frame_labels(read_array(f)) for f in files}


def shanghaitech_masks(frame_mask_folder: str | Path, stream_id: str) -> np.ndarray:
    """bool (frames, H, W) pixel masks of ShanghaiTech video ``stream_id``: ``test_pixel_mask/<video>.npy``
    beside the ``test_frame_mask/`` folder that --labels names (the official layout)."""
    path = Path(frame_mask_folder).resolve().parent / "test_pixel_mask" / f"{stream_id}.npy"
    if not path.is_file():
        raise AnomstreamError(f"{path}: no pixel masks for stream {stream_id!r} "
                              f"(ShanghaiTech: test_pixel_mask/ beside test_frame_mask/)")
    return read_masks(path)


LOADERS = {"ped2": ped2_frame_labels, "avenue": avenue_frame_labels, "shanghaitech": shanghaitech_frame_labels}
MASK_READERS = {"ped2": ped2_masks, "avenue": avenue_stream_masks, "shanghaitech": shanghaitech_masks}


def load_frame_labels(dataset: str, path: str | Path) -> dict[str, np.ndarray]:
    """``{stream_id: int8 0/1 labels}`` of a video dataset's test set, as its loader reads ``path``.
    Lengths are checked against the scored streams by ``pipeline.evaluation.video.check_labels``.
    Raises :class:`AnomstreamError` for an unknown dataset or a missing path."""
    if dataset not in LOADERS:
        raise AnomstreamError(f"unknown dataset {dataset!r}; known: {', '.join(LOADERS)}")
    if not Path(path).exists():
        raise AnomstreamError(f"{path}: no such labels path")
    return LOADERS[dataset](path)
