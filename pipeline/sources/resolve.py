"""What the sources named on a command line are: one spec -> its streams, and the files left out.

An existing path always means that path, whatever it looks like (``01``, ``mtd:x``, ``a?b#c``).
Otherwise a spec is, in this order: a line-scan spec (``linescan:SPEC?tile=H&stride=S``), a
labelled still dataset (``mtd:ROOT``, ``mvtec:``, ``mvtec_loco:``, ``ksdd2:``), a camera device
(``camera:N``, ``/dev/videoN``, or a bare number when no such path exists), or a stream URL
(rtsp, rtsps, rtmp, http(s), udp, tcp, srt).

A folder is one stream when it holds only images (the frames of a video, in numeric order, or
still images); otherwise each frame folder and each video in it (probed by content,
:mod:`pipeline.sources.probe`) is a stream, and every other entry is left out and named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..datasets.specs import is_dataset_spec
from ..errors import SourceError
from ..files import IMAGE_SUFFIXES, list_images, numeric_sort_key
from .base import Source
from .camera import CameraSource, Reconnect
from .clip import ClippedSource, parse_clip
from .datasets import dataset_sources
from .folders import (
    FrameFolderSource,
    ImageListSource,
    image_folder_source,
)
from .linescan import SCHEME as LINESCAN_SCHEME
from .linescan import linescan_sources
from .network import Decoding
from .probe import VIDEO_SUFFIXES, NotAVideoError
from .realtime import RealtimeSource
from .video import VideoFileSource, video_sources

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://", "srt://")
CAMERA_PREFIX = "camera:"
DEVICE_PATH = re.compile(r"/dev/video\d+")


@dataclass(frozen=True)
class Rejection:
    """An input that gives no stream, and why (the reason starts with the input's path)."""

    path: str
    reason: str


@dataclass
class Inputs:
    """The streams of some specs, the inputs that failed (errors: the run exits 2) and the files
    left out of folders because they are neither images nor videos (warnings)."""

    sources: list[Source] = field(default_factory=list)
    failed: list[Rejection] = field(default_factory=list)
    left_out: list[Rejection] = field(default_factory=list)

    def extend(self, other: Inputs) -> None:
        self.sources += other.sources
        self.failed += other.failed
        self.left_out += other.left_out


@dataclass(frozen=True)
class SourceOptions:
    """How sources are opened: ``still_images`` (an image folder holds stills, not frames),
    ``dataset_split`` of labelled datasets, ``max_frames``, ``reconnect`` and ``decoding`` of cameras;
    ``realtime``: files are played as live streams at their own frame rate."""

    max_frames: int | None = None
    still_images: bool = False
    dataset_split: str = "test"
    reconnect: Reconnect = Reconnect()
    realtime: bool = False
    decoding: Decoding = Decoding()


def resolve_inputs(specs: list[str], options: SourceOptions = SourceOptions(),
                   stream_ids: list[str | None] | None = None) -> Inputs:
    """Every spec's streams; a spec or a file that cannot be opened is a failure of its own, never
    the end of the others. ``stream_ids`` (one per spec, e.g. from a manifest): a spec's stream is
    named so (a spec of several streams: NAME_<each stream's own name>; the camera tracks of one
    video file: NAME, NAME#K)."""
    inputs = Inputs()
    for spec, name in zip(specs, stream_ids or [None] * len(specs), strict=True):
        try:
            found = _resolve(spec, options)
        except SourceError as error:
            inputs.failed.append(Rejection(spec, str(error)))
            continue
        if name:
            one_file = len(found.sources) == 1 or (all(isinstance(s, VideoFileSource) for s in found.sources)
                                                   and len({s.path for s in found.sources}) == 1)
            for source in found.sources:
                track = getattr(source, "track_name", "")
                source.stream_id = name + track if one_file else f"{name}_{source.stream_id}"
        inputs.extend(found)
    if options.realtime:
        inputs.sources = [source if source.is_live else RealtimeSource(source, options.max_frames)
                          for source in inputs.sources]
    return inputs


def open_sources(spec: str, max_frames: int | None = None, still_images: bool = False,
                 dataset_split: str = "test") -> list[Source]:
    """The streams of one spec, all or nothing (training, benches): the first failure raises
    SourceError; files left out of a folder are ignored."""
    inputs = _resolve(spec, SourceOptions(max_frames, still_images, dataset_split))
    if inputs.failed:
        raise SourceError(inputs.failed[0].reason)
    return inputs.sources


def _resolve(spec: str, options: SourceOptions) -> Inputs:
    path = Path(spec)
    if path.exists() and not DEVICE_PATH.fullmatch(spec):
        return _resolve_path(path.absolute(), options)  # decoders may run in another folder or machine
    cut = parse_clip(spec) if "?" in spec else None
    if cut is not None and Path(cut[0]).exists():
        inner = _resolve_path(Path(cut[0]).absolute(), options)
        inner.sources = [ClippedSource(source, cut[1], cut[0]) for source in inner.sources]
        return inner
    if spec.startswith(LINESCAN_SCHEME):
        return Inputs(linescan_sources(spec, lambda inner: open_sources(inner, options.max_frames)))
    if is_dataset_spec(spec):
        return Inputs(dataset_sources(spec, options.dataset_split))
    camera = _camera(spec, options)
    if camera is not None:
        return Inputs([camera])
    raise SourceError(f"{spec}: no such file or folder")


def _camera(spec: str, options: SourceOptions) -> CameraSource | None:
    """A camera or stream spec, or None. Device indices: ``camera:N``; a bare ``N`` only where no
    path of that name exists (checked before)."""
    number = spec.removeprefix(CAMERA_PREFIX)
    settings = {"max_frames": options.max_frames, "reconnect": options.reconnect,
                "decoding": options.decoding}
    if number.isdigit():
        return CameraSource(spec, stream_id=f"camera_{int(number)}", device=int(number), **settings)
    if spec.startswith(CAMERA_PREFIX):
        raise SourceError(f"{spec}: a camera device is camera:N with N its index (0, 1, ...)")
    if DEVICE_PATH.fullmatch(spec) or spec.lower().startswith(STREAM_SCHEMES):
        return CameraSource(spec, **settings)
    return None


def _resolve_path(path: Path, options: SourceOptions) -> Inputs:
    if path.is_file() and options.still_images and path.suffix.lower() in IMAGE_SUFFIXES:
        return Inputs([ImageListSource([path], path.stem, str(path))])
    if not path.is_dir():
        return Inputs(_videos(path))
    folder_source = image_folder_source if options.still_images else FrameFolderSource
    entries = sorted(path.iterdir(), key=numeric_sort_key)
    images = list_images(path)
    streams: list[Source] = []
    inputs = Inputs()
    for entry in entries:
        if entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
            continue
        if entry.is_dir():
            try:
                streams.append(folder_source(entry))
            except SourceError:  # the folder sources' one refusal: no image in it
                inputs.left_out.append(Rejection(str(entry), f"{entry}: a folder without images (not read)"))
            continue
        try:
            streams += _videos(entry)
        except NotAVideoError as error:
            inputs.left_out.append(Rejection(str(entry), str(error)))
        except SourceError as error:
            if entry.suffix.lower() in VIDEO_SUFFIXES:
                inputs.failed.append(Rejection(str(entry), str(error)))
            else:
                inputs.left_out.append(Rejection(str(entry), f"{entry}: not a video or an image"))
    if images and not streams:
        inputs.sources = [folder_source(path)]
        return inputs
    inputs.sources = streams
    inputs.left_out += [Rejection(str(p), f"{p}: an image among videos and frame folders (not read)") for p in images]
    if not streams and not inputs.failed:
        raise SourceError(f"{path}: folder holds no images, frame folders or videos")
    return inputs


def _videos(path: Path) -> list[VideoFileSource]:
    """A video file's streams: one per camera track (:func:`pipeline.sources.video.video_sources`)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise NotAVideoError(f"{path}: a still image, not a video; score the folder that holds it")
    return video_sources(path)
