"""Part of a recording by time: ``clip.mp4?start=10&end=70%`` (a video file or a frame folder).

Bounds: ``start`` / ``end`` in seconds of the recording (``12.5``, ``12.5s``) or as a share of its
length (``70%``: needs a known frame count), ``start_frame`` / ``end_frame`` as frame indices; each
optional, ``end`` excluded. The part's frames are numbered from 0 again and keep their timestamps
(seconds of the whole recording); its stream is named after the part (``vtest_end70%``), so two
parts of one file score into one store side by side. An existing path with a ``?`` in its name is
that path, never a cut.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl

from ..errors import SourceError
from .base import Frame, Gap, Source

KEYS = ("start", "end", "start_frame", "end_frame")
_SECONDS = re.compile(r"(\d+(?:\.\d*)?|\.\d+)s?")
_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)%")


@dataclass(frozen=True)
class Bound:
    """One bound: ``value`` in ``unit`` (``s`` seconds, ``%`` of the length, ``frame`` an index)."""

    value: float
    unit: str

    def text(self) -> str:
        return f"{self.value:g}{'' if self.unit == 'frame' else self.unit}"


@dataclass(frozen=True)
class ClipRange:
    """Where a part starts and ends (None: the recording's own start or end)."""

    start: Bound | None = None
    end: Bound | None = None

    def name(self) -> str:
        """What the part adds to its stream's name: ``start10s_end70%``."""
        return "_".join(f"{key}{bound.text()}" for key, bound in (("start", self.start), ("end", self.end)) if bound)

    def query(self) -> str:
        """The bounds as a spec's query (``start=10s&end=70%``), frame bounds as ``start_frame=N``."""
        return "&".join(f"{key}{'_frame' if bound.unit == 'frame' else ''}={bound.text()}"
                        for key, bound in (("start", self.start), ("end", self.end)) if bound)


def parse_clip(spec: str) -> tuple[str, ClipRange] | None:
    """``PATH?start=..&end=..`` -> (PATH, its range); None for a spec without such a query. Raises
    SourceError (one line, naming the spec) for another key, a bound that is not a number of
    seconds, a share or a frame index, both forms of one bound, or an end before the start."""
    path, mark, query = spec.rpartition("?")
    if not mark or not query or not any(query.startswith(f"{key}=") or f"&{key}=" in query for key in KEYS):
        return None
    bounds: dict[str, Bound] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in KEYS:
            raise SourceError(f"{spec}: unknown key {key!r} of a part of a recording (start, end, start_frame, end_frame)")
        side = key.removesuffix("_frame")
        if side in bounds:
            raise SourceError(f"{spec}: {side} given twice")
        bounds[side] = _bound(spec, key, value)
    clip = ClipRange(bounds.get("start"), bounds.get("end"))
    if clip.start and clip.end and clip.start.unit == clip.end.unit and clip.end.value <= clip.start.value:
        raise SourceError(f"{spec}: end {clip.end.text()} is not after start {clip.start.text()}")
    return path, clip


def _bound(spec: str, key: str, value: str) -> Bound:
    if key.endswith("_frame"):
        if not value.isdigit():
            raise SourceError(f"{spec}: {key}={value!r} is not a frame index (0, 1, ...)")
        return Bound(float(value), "frame")
    if (match := _PERCENT.fullmatch(value)) and float(match.group(1)) <= 100:
        return Bound(float(match.group(1)), "%")
    if match := _SECONDS.fullmatch(value):
        return Bound(float(match.group(1)), "s")
    raise SourceError(f"{spec}: {key}={value!r} is not seconds (12.5) or a share of the recording (70%)")


class ClippedSource(Source):
    """The frames of ``inner`` within ``clip`` (see the module's text)."""

    def __init__(self, inner: Source, clip: ClipRange, spec_path: str) -> None:
        self.inner, self.clip, self.spec_path = inner, clip, spec_path
        self.stream_id = f"{inner.stream_id}_{clip.name()}"
        self.fps = inner.fps
        self.warnings = inner.warnings
        if any(bound and bound.unit == "%" for bound in (clip.start, clip.end)) and not inner.frame_count:
            raise SourceError(f"{spec_path}: its length is not known, so a share (%) cannot cut it; give seconds")
        seconds = any(bound and bound.unit == "s" for bound in (clip.start, clip.end))
        if inner.frame_count and (inner.fps or not seconds):
            first, stop = self.frame_span()
            self.frame_count = max(0, stop - first)  # by the frame rate when seconds cut it: a close estimate
        else:
            self.frame_count = None

    def describe(self) -> str:
        return f"{self.inner.describe()}?{self.clip.query()}"

    def fingerprint(self) -> dict[str, int] | None:
        return self.inner.fingerprint()

    def _frame_bounds(self) -> tuple[int, int | None]:
        """The first frame index and the one after the last that shares and indices give (seconds:
        decided frame by frame, by timestamp)."""
        total = self.inner.frame_count

        def index(bound: Bound | None, default: int | None) -> int | None:
            if bound is None or bound.unit == "s":
                return default
            return int(bound.value) if bound.unit == "frame" else round(bound.value / 100 * total)

        return index(self.clip.start, 0) or 0, index(self.clip.end, total)

    def frame_span(self) -> tuple[int, int]:
        """(first, stop) frame indices of the part in the recording (seconds at the recording's
        fps). Raises SourceError when seconds cut a recording without a known frame rate."""
        first, stop = self._frame_bounds()
        stop = self.inner.frame_count if stop is None else stop
        for bound, side in ((self.clip.start, "start"), (self.clip.end, "end")):
            if bound is not None and bound.unit == "s":
                if not self.inner.fps:
                    raise SourceError(f"{self.spec_path}: no frame rate known, so seconds cannot cut it; give frames")
                index = math.ceil(bound.value * self.inner.fps - 1e-6)
                first, stop = (index, stop) if side == "start" else (first, index)
        return first, min(stop, self.inner.frame_count or stop)

    def use_grey(self) -> None:
        self.inner.use_grey()

    def frames(self) -> Iterator[Frame | Gap]:
        first, stop = self._frame_bounds()
        start_s = self.clip.start.value if self.clip.start and self.clip.start.unit == "s" else None
        end_s = self.clip.end.value if self.clip.end and self.clip.end.unit == "s" else None
        index = 0
        for item in self.inner.frames():
            if isinstance(item, Gap):
                yield item
                continue
            if (stop is not None and item.index >= stop) or (end_s is not None and item.timestamp >= end_s):
                return  # past the part: the rest is not decoded
            if item.index < first or (start_s is not None and item.timestamp < start_s):
                continue
            yield replace(item, stream_id=self.stream_id, index=index)
            index += 1
