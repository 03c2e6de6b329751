"""What a file holds, judged by its content (FFmpeg's probe through PyAV), never by its suffix.

A file is a video when FFmpeg finds a video stream in it that is not an attached picture (cover
art, a thumbnail) and that it can decode; containers and raw streams of every kind FFmpeg reads
(.mp4, .ts, .mts, .m2ts, .flv, .wmv, .3gp, raw .h264, no suffix at all) qualify alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import SourceError

# FFmpeg demuxers that read single pictures (a .jpg or .png file): an image is not a video
IMAGE_DEMUXERS = ("image2", "_pipe")
# "video" codecs of text art (FFmpeg's tty demuxer): never camera footage
TEXT_CODECS = {"ansi", "bintext", "xbin", "idf"}
# suffixes under which people store videos: a file so named that holds no decodable video is a
# broken video (an error), any other file that is not a video is only left out of its folder
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                  ".flv", ".wmv", ".asf", ".3gp", ".3g2", ".h264", ".264", ".h265", ".hevc", ".mjpeg", ".ogv",
                  ".vob", ".mxf", ".y4m", ".dav"}


class NotAVideoError(SourceError):
    """FFmpeg reads the file, and it holds no video stream (audio, cover art only, a picture)."""


@dataclass(frozen=True)
class VideoProbe:
    """The video stream a file will be decoded from."""

    stream_index: int  # index among all the container's streams
    frame_count: int | None  # from the container header: an estimate (None when absent)
    fps: float | None


def error_reason(error: Exception) -> str:
    """FFmpeg's or the OS's words for an error, without the path it repeats."""
    return getattr(error, "strerror", None) or (str(error).splitlines() or [type(error).__name__])[0]


def probe_video(path: Path) -> VideoProbe:
    """Find the video stream of ``path`` by content.

    Raises:
        NotAVideoError: FFmpeg opens the file but finds no decodable, non-picture video stream
            (an audio file with cover art, an image, text art).
        SourceError: the file is empty, unreadable, or FFmpeg cannot open it at all.
    """
    import av

    try:
        if path.stat().st_size == 0:
            raise SourceError(f"{path}: empty file (0 bytes)")
        container = av.open(str(path))
    except SourceError:
        raise
    except (OSError, av.FFmpegError) as error:
        raise SourceError(f"{path}: cannot decode video ({error_reason(error)})") from None
    with container:
        if any(part in container.format.name for part in IMAGE_DEMUXERS):
            raise NotAVideoError(f"{path}: a still image, not a video")
        pictures = [s for s in container.streams.video if s.disposition & av.stream.Disposition.attached_pic]
        kinds = sorted({s.type for s in container.streams if s not in pictures}) or ["no stream"]
        for stream in container.streams.video:
            if stream in pictures:
                continue
            codec = stream.codec_context.name if stream.codec_context else None
            if codec is None or codec in TEXT_CODECS:
                continue
            return VideoProbe(stream.index, stream.frames or None,
                              float(stream.average_rate) if stream.average_rate else None)
        held = " and ".join([*kinds, *(["cover art"] if pictures else [])])
        raise NotAVideoError(f"{path}: no video stream (the file holds {held})")
