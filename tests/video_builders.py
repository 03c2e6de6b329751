"""Small videos of every kind for tests, made from real frames: containers, display matrices,
headers that promise more frames than the stream holds."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from anomstream.pipeline.encode import encode_video

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


def encode_h264(frames: list[np.ndarray], path: Path, fps: int = 10, gop: int = 12, bframes: int = 2,
                container_format: str | None = None, first_pts: int = 0) -> Path:
    """H.264 with a keyframe every ``gop`` frames exactly (no scene-cut keyframes) and up to
    ``bframes`` B-frames; the first frame shown at ``first_pts / fps`` seconds."""
    import av

    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=fps, options={"g": str(gop), "bf": str(bframes), "crf": "20",
                                                                   "x264-params": "scenecut=0"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for k, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = first_pts + k
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def mux_tracks(path: Path, tracks: list[list[np.ndarray]], codecs: list[str], rates: list[int] | None = None) -> Path:
    """One container holding a video stream per entry of ``tracks`` (frames of each, its FFmpeg
    encoder in ``codecs``), interleaved frame by frame as a dash cam writes them."""
    import av

    with av.open(str(path), mode="w") as container:
        streams = []
        for images, codec, rate in zip(tracks, codecs, rates or [10] * len(tracks)):
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height = images[0].shape[1], images[0].shape[0]
            stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
            streams.append(stream)
        for k in range(max(len(images) for images in tracks)):
            for stream, images in zip(streams, tracks):
                for packet in stream.encode(av.VideoFrame.from_ndarray(images[k], format="rgb24")) if k < len(images) else ():
                    container.mux(packet)
        for stream in streams:
            for packet in stream.encode():
                container.mux(packet)
    return path


def packets(video: Path) -> list[tuple[int, int, int, bool]]:
    """(byte position, size, frame index in display order, keyframe) of each packet of the first
    video stream, in decode order."""
    import av

    with av.open(str(video)) as container:
        found = [(p.pos, p.size, p.pts, p.is_keyframe) for p in container.demux(container.streams.video[0]) if p.size]
    shown = sorted(pts for _, _, pts, _ in found)
    return [(pos, size, shown.index(pts), key) for pos, size, pts, key in found]


def damage_packet(video: Path, out: Path, number: int, middle: bool = False, count: int = 48) -> int:
    """A copy of ``video`` with ``count`` bytes of its packet ``number`` (decode order) inverted, at
    the packet's start (the decoder refuses it) or ``middle`` (the decoder conceals the damage);
    returns the frame index (display order) of that packet."""
    pos, size, shown, _ = packets(video)[number]
    data = bytearray(video.read_bytes())
    start = pos + (size // 2 if middle else 0)
    data[start:start + count] = bytes(255 - b for b in data[start:start + count])
    out.write_bytes(bytes(data))
    return shown


def cut_copy(video: Path, out: Path, first: int) -> Path:
    """A stream copy of ``video`` from its packet ``first`` (decode order) on, as ``ffmpeg -ss ...
    -c copy`` makes one that starts between keyframes; the first frame shown at 0 s. (Matroska:
    MP4 would hide the frames shown before the first packet behind an edit list.)"""
    import av

    with av.open(str(video)) as source, av.open(str(out), mode="w") as target:
        stream = source.streams.video[0]
        copy = target.add_stream_from_template(stream)
        kept = [p for p in source.demux(stream) if p.size][first:]
        shift = min(p.pts for p in kept)
        for packet in kept:
            packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, copy
            target.mux(packet)
    return out


def encode_interlaced_mpeg2(frames: list[np.ndarray], path: Path, fps: int = 25) -> Path:
    """Interlaced MPEG-2 in MPEG-TS with open GOPs of 12 and 2 B-frames, as broadcast recordings are."""
    import av

    with av.open(str(path), mode="w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=fps, options={"flags": "+ildct+ilme", "top": "1", "bf": "2",
                                                                      "g": "12"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
