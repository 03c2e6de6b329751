"""What a file holds, judged by its content (FFmpeg's probe through PyAV), never by its suffix.

A file is a video when FFmpeg finds a video stream in it that is not an attached picture (cover
art, a thumbnail) and that it can decode; containers and raw streams of every kind FFmpeg reads
(.mp4, .ts, .mts, .m2ts, .flv, .wmv, .3gp, raw .h264, no suffix at all) qualify alike.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError, error_reason

# FFmpeg demuxers that read single pictures (a .jpg or .png file): an image is not a video
IMAGE_DEMUXERS = ("image2", "_pipe")
# codecs of single pictures: as a second video track, a thumbnail rather than the video
PICTURE_CODECS = {"mjpeg", "png", "bmp", "gif", "webp", "tiff", "jpeg2000"}
# "video" codecs of text art (FFmpeg's tty demuxer): never camera footage
TEXT_CODECS = {"ansi", "bintext", "xbin", "idf"}
# suffixes under which people store videos: a file so named that holds no decodable video is a
# broken video (an error), any other file that is not a video is only left out of its folder
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                  ".flv", ".wmv", ".asf", ".3gp", ".3g2", ".h264", ".264", ".h265", ".hevc", ".mjpeg", ".ogv",
                  ".vob", ".mxf", ".y4m", ".dav"}


class NotAVideoError(SourceError):
    """FFmpeg reads the file, and it holds no video stream (audio, cover art only, a picture)."""


class NotAFileError(SourceError):
    """Nothing any decoder could read: the path is missing, empty, or not a regular file."""


@dataclass(frozen=True)
class VideoTrack:
    """One video track a file will be decoded from (a camera)."""

    stream_index: int  # index among all the container's streams
    video_index: int  # index among its video streams (FFmpeg's ``-map 0:v:K``)
    frame_count: int | None  # from the container header: an estimate (None when absent)
    fps: float | None


@dataclass(frozen=True)
class VideoProbe:
    """The video track a file will be decoded from (the main one), the file's other cameras
    (``tracks``: the main one first, then the others in file order) and the video tracks that
    are no camera, each named with why (``left_out``: stills, thumbnails, tracks FFmpeg cannot
    decode; cover art, flagged as such by the container, is not named)."""

    stream_index: int  # index among all the container's streams
    frame_count: int | None  # from the container header: an estimate (None when absent)
    fps: float | None
    tracks: tuple[VideoTrack, ...] = ()
    left_out: tuple[str, ...] = ()


def _video_rank(stream) -> tuple:
    """Order of preference among video streams: a moving-picture codec, then more frames, then a
    longer duration (the stream's, or Matroska's DURATION tag)."""
    duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
    tag = stream.metadata.get("DURATION", "")
    if not duration and tag.count(":") == 2:
        hours, minutes, seconds = tag.split(":")
        try:
            duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            duration = 0.0
    return stream.codec_context.name not in PICTURE_CODECS, stream.frames or 0, duration


def _track(stream, video_index: int) -> VideoTrack:
    return VideoTrack(stream.index, video_index, stream.frames or None,
                      float(stream.average_rate) if stream.average_rate else None)


def _packet_counts(container, streams: list, enough: int = 2, limit: int = 256) -> dict[int, int]:
    """Packets of each of ``streams`` among the file's first ``limit`` packets of any stream
    (stopping once each has ``enough``): a thumbnail track holds one picture, a camera one per
    frame. Every stream is demuxed so that the limit bounds what is read, whatever the tracks hold."""
    counts = {stream.index: 0 for stream in streams}
    try:
        for read, packet in enumerate(container.demux()):
            if packet.size and packet.stream.index in counts:
                counts[packet.stream.index] += 1
            if read >= limit or min(counts.values()) >= enough:
                break
    except Exception:  # noqa: BLE001 - a damaged file: what was counted stands
        pass
    return counts


def _other_tracks(container, path: Path, main, candidates: list, video: list) -> tuple[list[VideoTrack], list[str]]:
    """The cameras among the video tracks besides ``main``, and a line for each one left out."""
    import av

    still = av.stream.Disposition.still_image | av.stream.Disposition.timed_thumbnails
    others = [s for s in candidates if s is not main]
    unknown = [s for s in others if not s.frames and not s.disposition & still]
    counts = _packet_counts(container, unknown) if unknown else {}
    tracks, left_out = [], []
    for stream in others:
        k = video.index(stream)
        frames = stream.frames or counts.get(stream.index, 0)
        if stream.disposition & still or frames <= 1:  # sampled: no second picture among the first packets
            left_out.append(f"{path}: video track {k} ({stream.codec_context.name}) left out: a still picture "
                            f"(thumbnail), not a camera")
        else:
            tracks.append(_track(stream, k))
    return tracks, left_out


def probe_video(path: Path) -> VideoProbe:
    """Find the video tracks of ``path`` by content: the main one (a moving-picture codec with the
    most frames, or the longest), and every other camera the file holds.

    Raises:
        NotAVideoError: FFmpeg opens the file but finds no decodable, non-picture video stream
            (an audio file with cover art, an image, text art).
        NotAFileError: the path is missing, empty or not a regular file.
        SourceError: FFmpeg cannot open the file at all.
    """
    import av

    try:
        status = path.stat()
    except OSError as error:
        raise NotAFileError(f"{path}: cannot decode video ({error_reason(error)})") from None
    if not stat.S_ISREG(status.st_mode):
        raise NotAFileError(f"{path}: not a regular file (a device, pipe or socket)")
    if status.st_size == 0:
        raise NotAFileError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except (OSError, av.FFmpegError) as error:
        raise SourceError(f"{path}: cannot decode video ({error_reason(error)})") from None
    with container:
        if any(part in container.format.name for part in IMAGE_DEMUXERS):
            raise NotAVideoError(f"{path}: a still image, not a video")
        video = list(container.streams.video)
        pictures = [s for s in video if s.disposition & av.stream.Disposition.attached_pic]
        kinds = sorted({s.type for s in container.streams if s not in pictures}) or ["no stream"]
        candidates = [s for s in video if s not in pictures and s.codec_context is not None
                      and s.codec_context.name not in TEXT_CODECS]
        if candidates:  # a thumbnail track (Matroska has no attached-picture flag) loses to the video
            main = max(candidates, key=_video_rank)
            undecodable = [f"{path}: video track {video.index(s)} left out: FFmpeg cannot decode it"
                           for s in video if s not in pictures and s.codec_context is None]
            tracks, left_out = _other_tracks(container, path, main, candidates, video)
            first = _track(main, video.index(main))
            return VideoProbe(first.stream_index, first.frame_count, first.fps, (first, *tracks),
                              (*left_out, *undecodable))
        held = " and ".join([*kinds, *(["cover art"] if pictures else [])])
        raise NotAVideoError(f"{path}: no video stream (the file holds {held})")
