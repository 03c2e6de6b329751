"""Encode frames into an H.264 mp4 with PyAV (OpenCV cannot write H.264)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


def encode_video(frames: Iterable[np.ndarray], path: str | Path, fps: int = 25, crf: int = 20,
                 codec: str = "libx264", container_format: str | None = None) -> int:
    """Write RGB uint8 (H, W, 3) frames; returns the number written. H.264 in mp4 by default, with
    the index first (faststart), so a player or decoder can start before the file is complete;
    ``codec`` / ``container_format`` (FFmpeg names, e.g. "wmv2" / "asf") write other kinds, the
    container by default chosen from the suffix. Odd sizes are cropped to even ones."""
    import av

    count = 0
    options = {"movflags": "faststart"} if Path(path).suffix.lower() in (".mp4", ".mov", ".m4v") else {}
    with av.open(str(path), mode="w", format=container_format, options=options) as container:
        stream = None
        for image in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=fps, options={"crf": str(crf)} if codec == "libx264" else {})
                stream.height, stream.width = image.shape[0] - image.shape[0] % 2, image.shape[1] - image.shape[1] % 2
                stream.pix_fmt = "yuv420p"
            image = np.ascontiguousarray(image[: stream.height, : stream.width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return count
