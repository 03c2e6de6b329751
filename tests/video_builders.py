"""Small videos of every kind for tests, made from real frames: containers, display matrices,
headers that promise more frames than the stream holds."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from pipeline.encode import encode_video

# (file name, FFmpeg encoder, container format or None for the suffix's)
CONTAINERS = [
    ("cam.ts", "libx264", None), ("cam.m2ts", "libx264", "mpegts"), ("cam.mts", "mpeg2video", "mpegts"),
    ("cam.flv", "flv", None), ("cam.wmv", "wmv2", "asf"), ("cam.3gp", "h263", None),
    ("cam.h264", "libx264", "h264"), ("cam.avi", "mpeg4", None), ("recording", "libx264", "matroska"),
]


def ped2_frames(ped2: Path, count: int = 12, size: tuple[int, int] = (176, 144)) -> list[np.ndarray]:
    """The first ``count`` frames of Ped2 test clip 01 as RGB (H, W, 3), resized to ``size`` (W, H)
    (176x144: a size every codec here accepts, H.263 included)."""
    paths = sorted((ped2 / "testing" / "frames" / "01").glob("*.jpg"))[:count]
    return [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), size) for p in paths]


def write_containers(frames: list[np.ndarray], folder: Path) -> list[Path]:
    """One file per entry of CONTAINERS in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, codec, container_format in CONTAINERS:
        encode_video(frames, folder / name, fps=10, codec=codec, container_format=container_format)
        paths.append(folder / name)
    return paths


def with_display_matrix(mp4: Path, out: Path, a: int, b: int, c: int, d: int) -> Path:
    """A copy of a one-track mp4 whose track header (tkhd) matrix is [[a, b], [c, d]] (units of 1):
    the display rotation phones write, here for any quarter turn or mirror."""
    data = bytearray(mp4.read_bytes())
    at = data.index(b"tkhd")
    assert data.count(b"tkhd") == 1 and data[at + 4] == 0, "one version-0 track header expected"
    matrix = at + 4 + 40  # version/flags, times, track id, duration, layer, volume...
    struct.pack_into(">9i", data, matrix, a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30)
    out.write_bytes(bytes(data))
    return out


def with_avi_frame_count(avi: Path, out: Path, frames: int) -> Path:
    """A copy of an AVI whose headers (avih total frames, strh length) promise ``frames`` frames."""
    data = bytearray(avi.read_bytes())
    struct.pack_into("<I", data, data.index(b"avih") + 8 + 16, frames)
    struct.pack_into("<I", data, data.index(b"strh") + 8 + 32, frames)
    out.write_bytes(bytes(data))
    return out
