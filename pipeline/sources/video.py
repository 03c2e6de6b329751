"""Video files as sources: PyAV (OpenCV fallback), upright by their display matrix, decoded as FFmpeg
decodes them: a damaged packet costs the frames it damages, not the rest of the file; every video
track is a camera; stored times only move forward."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SourceError, error_reason
from ..files import files_fingerprint
from .base import Frame, Source
from .probe import NotAFileError, NotAVideoError, VideoTrack, probe_video


class VideoFileSource(Source):
    """One video track of a file decoded with PyAV; OpenCV when PyAV cannot open it. Frames come
    upright: a display rotation in the container (phones store portrait video sideways with a
    display matrix) is applied as players apply it.

    The frame count of a container header is an estimate: a stream that ends cleanly is complete
    (fewer frames than the header said is a warning). A damaged packet in the middle costs only the
    frames it damages (:class:`TrackDecoder`): they are ``damaged`` frames (status DECODE_ERROR),
    counted in a warning. A stream that ends in damage (a cut file) or that the demuxer cannot read
    on raises SourceError after every frame before it has been yielded, so those frames are still
    scored. Times go on increasing across a timestamp reset (:class:`StreamClock`).

    ``track``: the video track to decode (:func:`video_sources` gives one source per camera track);
    None: the file's main track, found by :func:`pipeline.sources.probe.probe_video`, whose other
    camera tracks are then ``other_tracks``.

    Raises (at construction): NotAVideoError when the file holds no video stream, SourceError when
    it cannot be read or decoded.
    """

    def __init__(self, path: Path, stream_id: str | None = None, backend: str = "auto",
                 track: VideoTrack | None = None) -> None:
        """``backend``: "auto" (PyAV, OpenCV when PyAV cannot open the file), "pyav" or "opencv"."""
        self.path = path
        self.stream_id = stream_id or path.stem
        self.other_tracks: tuple[VideoTrack, ...] = ()
        self.track_name = f"#{track.video_index}" if track is not None else ""  # the stream name's suffix
        self._notes: list[str] = []  # warnings known before decoding (video tracks left out)
        self.warnings = []
        self._backend = "pyav"
        self._stream_index = 0
        if track is not None:
            self._stream_index, self.frame_count, self.fps = track.stream_index, track.frame_count, track.fps
            return
        try:
            probe = probe_video(path)
        except (NotAVideoError, NotAFileError):
            raise
        except SourceError as pyav_error:
            if backend == "pyav":
                raise
            self._backend = "opencv"
            self._probe_opencv(pyav_error)
            return
        self._stream_index, self.frame_count, self.fps = probe.stream_index, probe.frame_count, probe.fps
        self.other_tracks, self._notes = probe.tracks[1:], list(probe.left_out)
        self.warnings = list(self._notes)
        if backend == "opencv":
            self._backend = "opencv"
            self.other_tracks = ()
            self._probe_opencv(SourceError(f"{path}: OpenCV cannot decode this video"))

    def _probe_opencv(self, pyav_error: SourceError) -> None:
        import cv2

        capture = self._capture()
        ok = capture.isOpened() and capture.read()[0]
        if not ok:
            capture.release()
            raise pyav_error
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None
        self.fps = capture.get(cv2.CAP_PROP_FPS) or None
        capture.release()

    def _capture(self):
        import cv2

        capture = cv2.VideoCapture(str(self.path))
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)  # upright as players show it (OpenCV's default too)
        return capture

    def describe(self) -> str:
        return str(self.path)

    def fingerprint(self) -> dict[str, int]:
        return files_fingerprint([self.path])

    def frames(self) -> Iterator[Frame]:
        self.warnings[:] = self._notes  # a stream decoded again warns once (in place: wrappers share the list)
        return self._frames_pyav() if self._backend == "pyav" else self._frames_opencv()

    def _frames_pyav(self) -> Iterator[Frame]:
        import av

        try:
            container = av.open(str(self.path))
        except (OSError, av.FFmpegError) as error:
            raise SourceError(f"{self.path}: cannot decode video ({error_reason(error)})") from None
        with container:
            stream = container.streams[self._stream_index]
            # one thread: slice threads switch FFmpeg's error concealment (and its corrupt flags) off,
            # frame threads report a damaged packet late or not at all (a cut file would end "cleanly")
            stream.thread_type, stream.thread_count = "SLICE", 1
            decoder = TrackDecoder(self, container, stream)
            yield from decoder.frames()
            if not self._check_count(decoder.index) and not decoder.clock.jumps:  # a jump voids the header's duration
                self._check_duration(container, stream, decoder.clock.first, decoder.clock.last)

    def _check_duration(self, container, stream, first_time: float | None, last_time: float | None) -> None:
        """Warn when the stream ended well before the duration its header gives (a cut file in a
        container without an index: Matroska, MPEG-TS, AVI). The stream starts at its first frame
        shown, or the header's start when earlier (the first packet of a stream with B-frames is
        not the first frame shown)."""
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        start = min(start, first_time) if first_time is not None else start
        if stream.duration:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1e6  # AV_TIME_BASE
        else:
            return
        interval = 1.0 / self.fps if self.fps else 0.04
        ended = (last_time - start + interval) if last_time is not None else 0.0
        if duration - ended > 2 * interval:
            self.warnings.append(f"{self.path}: the stream ended cleanly after {ended:.2f} s, the container header "
                                 f"said {duration:.2f} s (a cut file?)")

    def _frames_opencv(self) -> Iterator[Frame]:
        import cv2

        capture = self._capture()
        index = 0
        try:
            while True:
                ok, image = capture.read()
                if not ok:
                    break
                yield Frame(self.stream_id, index, index / (self.fps or 25.0), cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
                index += 1
        finally:
            capture.release()
        self._check_count(index)

    def _check_count(self, decoded: int) -> bool:
        """Warn (and say so) when the header's frame count was not what the stream held."""
        if self.frame_count and decoded != self.frame_count:
            self.warnings.append(f"{self.path}: the container header said {self.frame_count} frames, "
                                 f"the stream ended cleanly after {decoded}")
            return True
        return False


def video_sources(path: Path, backend: str = "auto") -> list[VideoFileSource]:
    """A source per camera track of the video file ``path`` (dash cams, two-lens cameras): the main
    track named after the file (``stem``), each other one ``stem#K``, K its index among the file's
    video streams (FFmpeg's ``-map 0:v:K``). Video tracks that are no camera (a still, a thumbnail)
    are named in the main source's warnings; cover art is not a track. Raises as VideoFileSource."""
    main = VideoFileSource(path, backend=backend)
    return [main, *(VideoFileSource(path, f"{main.stream_id}#{track.video_index}", backend, track)
                    for track in main.other_tracks)]


@dataclass
class _Sent:
    """A packet sent to the decoder whose frame is not out yet."""

    key: tuple[int, float] | None  # (clock epoch, time s): its place in display order; None: unknown
    reason: str | None = None  # why the decoder refused it; None: accepted


class TrackDecoder:
    """One pass of PyAV over a video track, as FFmpeg decodes it (``ffmpeg -i FILE -f framemd5 -``),
    with a row for every frame the file holds, so rows stay aligned with an undamaged copy's.

    Each packet is tied to the frame it becomes (FFmpeg's ``copy_opaque``); frames come out in
    display order (held ``HOLD`` deep: a decoder shows frames out of order after damage). A frame
    that is no real picture comes ``damaged`` (status DECODE_ERROR): a packet the decoder refuses
    (a stand-in takes its place: the last picture), a frame FFmpeg flags corrupt (concealed, or
    decoded before its references: a cut copy before its first keyframe), a frame FFmpeg never
    shows at the start of a stream, and, after damage until a whole keyframe, the frames it never
    shows and those it shows after skipping some. A stream that ends in damage (nothing accepted
    after the last refused packet: a cut file) or that the demuxer cannot read on raises
    SourceError "video is truncated" after the frames before it. What was damaged is one warning.
    """

    HOLD = 3

    def __init__(self, source: VideoFileSource, container, stream) -> None:
        import av

        self.source, self.container, self.stream = source, container, stream
        flags = av.codec.context.Flags
        stream.codec_context.flags |= flags.output_corrupt | flags.copy_opaque  # corrupt frames shown flagged
        discontinuous = bool(container.format.flags & av.format.Flags.ts_discont.value)  # MPEG-TS and the like
        self.clock = StreamClock(source.path, source.fps, discontinuous, source.warnings)
        self.index = 0  # frames yielded (rows), stand-ins included
        self.sent: dict[int, _Sent] = {}  # by packet number
        self.placed: set[int] = set()  # packets whose row is a stand-in
        self.numbers = 0  # packets sent
        self.epoch, self.top = 0, None  # the clock epoch (a new one where times go back: a reset), its latest time
        reorder = max(4, (stream.codec_context.has_b_frames or 0) + 2)  # how far back a packet's time may be shown
        self.reach = reorder / source.fps if source.fps else reorder * 0.04
        self.held: list = []  # heap of (key, arrival, frame, damaged)
        self.arrivals = itertools.count()
        self.released: tuple[int, float] | None = None  # key of the last frame out
        self.damaged_run = False  # since damage, until a whole keyframe
        self.skipped = False  # the decoder skipped frames in this damaged run
        self.tail: list[int] = []  # packets refused since the last one accepted
        self.tail_error: Exception | None = None
        self.lost: dict[str, list[int]] = {}  # frames without a picture, by why
        self.corrupt: list[int] = []  # frames decoded damaged
        self.image: np.ndarray | None = None  # the last picture

    def frames(self) -> Iterator[Frame]:
        """The track's frames in display order; raises SourceError for a truncated stream."""
        import av

        packets = self.container.demux(self.stream)
        try:
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.FFmpegError as error:  # the demuxer cannot read on: what the decoder holds comes out
                    yield from self._decode(None)
                    yield from self._release(final=True)
                    raise self._truncated(error) from error
                yield from self._decode(packet)
            for number in self.tail:  # damage with nothing after it: the file was cut there (no rows)
                self.sent.pop(number, None)
            yield from self._release(final=True)
            if self.tail:
                raise self._truncated(self.tail_error)
        finally:
            self._warn()
            self.clock.finish()

    def _decode(self, packet) -> Iterator[Frame]:
        import av

        number = self._send(packet) if packet is not None and packet.size else None
        try:
            decoded = packet.decode() if packet is not None else self.stream.codec_context.decode(None)
        except av.FFmpegError as error:
            self.tail.append(-1 if number is None else number)
            self.tail_error = error
            if number is not None and not packet.is_discard:  # its frame is lost, the next packets go on
                self.sent.setdefault(number, _Sent(None)).reason = error_reason(error)
                self.damaged_run = True
            return
        if number is not None:
            self.tail = []
        for frame in decoded:
            yield from self._arrive(frame)

    def _send(self, packet) -> int:
        """Number ``packet`` (FFmpeg hands the number to its frame) and note its place in display order."""
        number, self.numbers = self.numbers, self.numbers + 1
        packet.opaque = number
        when = _seconds(packet.pts, packet.time_base)
        if when is not None:
            if self.top is not None and when < self.top - self.reach:  # further back than reordering goes
                self.epoch, self.top = self.epoch + 1, when
            self.top = when if self.top is None else max(self.top, when)
            if not packet.is_discard:
                self.sent[number] = _Sent((self.epoch, when))
        return number

    def _arrive(self, frame) -> Iterator[Frame]:
        number = frame.opaque if isinstance(frame.opaque, int) else None
        if number in self.placed:  # shown too late: a stand-in holds its row already
            self.placed.discard(number)
            return
        sent = self.sent.pop(number, None)
        damaged = frame.is_corrupt or (sent is not None and sent.reason is not None)  # refused, yet shown
        self.damaged_run = self.damaged_run or damaged
        key = (sent.key[0], frame.time) if sent is not None and sent.key is not None and frame.time is not None else None
        if key is None or (self.released is not None and key < self.released):  # no place known: in decoder order
            self.damaged_run = self.damaged_run or key is not None  # shown after frames that follow it: damage
            yield from self._release(final=False)
            yield self._picture(frame, damaged, None)
            return
        if any(key < held[0] for held in self.held):
            self.damaged_run = True  # shown out of order: damage
        heapq.heappush(self.held, (key, next(self.arrivals), frame, damaged))
        while len(self.held) > self.HOLD:
            yield from self._release_one()

    def _release(self, final: bool) -> Iterator[Frame]:
        while self.held:
            yield from self._release_one()
        yield from self._lose(None, final)

    def _release_one(self) -> Iterator[Frame]:
        key, _, frame, damaged = heapq.heappop(self.held)
        yield from self._lose(key, False)
        if frame.key_frame and not damaged:
            self.damaged_run = self.skipped = False
        yield self._picture(frame, damaged or self.skipped, key)

    def _lose(self, before: tuple | None, final: bool) -> Iterator[Frame]:
        """Stand-ins for the packets shown before ``before`` that never became a picture (``final``:
        all of them; else only those whose place is unknown)."""
        gone = [(sent.key, number) for number, sent in self.sent.items()
                if sent.key is None or final or (before is not None and sent.key < before)]
        for key, number in sorted(gone, key=lambda item: (item[0] is not None, item[0] or (0, 0.0), item[1])):
            sent = self.sent.pop(number)
            reason = sent.reason or self._why_unseen(final)
            if reason is None:
                continue  # a clean stream: FFmpeg shows no frame for it either (a field of a pair)
            self.skipped = self.skipped or (sent.reason is None and self.released is not None)
            self.lost.setdefault(reason, []).append(self.index)
            self.placed.add(number)
            yield self._frame(self.image if self.image is not None else self._blank(), key and key[1], True)

    def _why_unseen(self, final: bool) -> str | None:
        """Why FFmpeg shows no frame for an accepted packet (None: it shows none in a clean stream either)."""
        if self.released is None:
            return "no keyframe in the file" if final else "before the first keyframe"
        return "a frame it depends on was lost" if self.damaged_run else None

    def _picture(self, frame, damaged: bool, key: tuple | None) -> Frame:
        self.image = upright(frame.to_ndarray(format="rgb24"), frame.rotation)
        if damaged:
            self.corrupt.append(self.index)
        self.released = key if key is not None else self.released
        return self._frame(self.image, frame.time, damaged)

    def _frame(self, image: np.ndarray, when: float | None, damaged: bool) -> Frame:
        frame = Frame(self.source.stream_id, self.index, self.clock.stamp(when, self.index), image, damaged)
        self.index += 1
        return frame

    def _blank(self) -> np.ndarray:
        context = self.stream.codec_context
        return np.zeros((context.height or 2, context.width or 2, 3), np.uint8)

    def _truncated(self, error: Exception | None) -> SourceError:
        reason = error_reason(error) if error is not None else "damaged end of file"
        return SourceError(f"{self.source.path}: video is truncated: decoded {self.index} of "
                           f"{self.source.frame_count or 'an unknown number of'} frames ({reason})")

    def _warn(self) -> None:
        """One warning naming the damaged frames, if any."""
        parts = [f"{len(lost)} frame(s) could not be decoded ({frame_list(lost)}: {reason})"
                 for reason, lost in self.lost.items()]
        if self.corrupt:
            parts.append(f"{len(self.corrupt)} frame(s) decoded damaged ({frame_list(self.corrupt)}: concealed by the "
                         f"decoder or missing a reference)")
        if parts:
            self.source.warnings.append(f"{self.source.path}: damaged video: {'; '.join(parts)}; "
                                        f"status decode_error, not scored")


class StreamClock:
    """The stored times of one track's frames: the file's own, made to increase strictly.

    Where the file's clock goes back (a timestamp reset: MPEG-TS segments appended, a camera
    restarting inside a recording) or, in formats FFmpeg knows to have discontinuities (MPEG-TS),
    leaps forward by more than FFmpeg's 10 s, times go on one frame interval after the last one,
    as FFmpeg corrects them, with a warning naming the frame and both times (the first
    ``SHOWN``; then one line counts the rest).
    """

    LEAP_S = 10.0  # FFmpeg's dts_delta_threshold
    SHOWN = 5

    def __init__(self, path: Path, fps: float | None, discontinuous: bool, warnings: list[str]) -> None:
        self.path, self.discontinuous, self.warnings = path, discontinuous, warnings
        self.interval = 1.0 / fps if fps else 0.04
        self.offset = 0.0  # stored minus the file's time
        self.raw: float | None = None  # the file's time of the last frame that had one
        self.first: float | None = None  # the stored time of the first frame
        self.last: float | None = None  # the stored time of the last frame
        self.jumps = 0

    def stamp(self, raw: float | None, index: int) -> float:
        """The stored time of frame ``index`` whose time in the file is ``raw`` seconds (None: unknown)."""
        if raw is None:
            stored = index * self.interval if self.last is None else self.last + self.interval
        else:
            stored = raw + self.offset
            back = self.last is not None and stored <= self.last
            if back or (self.discontinuous and self.last is not None and stored - self.last > self.LEAP_S):
                stored = self.last + self.interval
                self._jumped(index, raw, stored, back)
                self.offset = stored - raw
            self.raw = raw
        self.first = stored if self.first is None else self.first
        self.last = stored
        return stored

    def _jumped(self, index: int, raw: float, stored: float, back: bool) -> None:
        self.jumps += 1
        if self.jumps > self.SHOWN:
            return
        before = self.raw if self.raw is not None else self.last
        kind = "back" if back else "forward"
        why = "a timestamp reset" if back else "a timestamp discontinuity"
        self.warnings.append(f"{self.path}: the clock jumped {kind} at frame {index}, from {before:.3f} s to "
                             f"{raw:.3f} s ({why}); stored times go on from {stored:.3f} s")

    def finish(self) -> None:
        """The line that counts the jumps not shown one by one."""
        if self.jumps > self.SHOWN:
            self.warnings.append(f"{self.path}: the clock jumped {self.jumps - self.SHOWN} more time(s); "
                                 f"stored times go on increasing")


def frame_list(indices: list[int], shown: int = 8) -> str:
    """``frame 20``, ``frames 0-2, 20`` (the first ``shown`` runs, then ``...``)."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:shown]) + (", ..." if len(runs) > shown else "")
    return f"frame {text}" if len(indices) == 1 else f"frames {text}"


def _seconds(pts: int | None, time_base) -> float | None:
    return float(pts * time_base) if pts is not None and time_base is not None else None


def upright(image: np.ndarray, rotation: float) -> np.ndarray:
    """Turn a decoded (H, W, C) frame as its display matrix says. ``rotation``: degrees
    counter-clockwise (FFmpeg's ``av_display_rotation_get``, PyAV's ``VideoFrame.rotation``);
    FFmpeg's own auto-rotation likewise handles multiples of 90 degrees."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image
