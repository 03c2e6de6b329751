"""Video files as they come from the field, round 2 (issue 30), on small files built here from
Ped2 frames, plus the handed cases 01 and 05 of ../shared/cases/field2:

1. a damaged stream is still a stream: a damaged packet costs the frames it damages (status
   decode_error, a row each, never in a scored window), not the rest of the file;
2. every video track is a camera: a stream per track, a still or thumbnail track named;
3. time only moves forward: stored times increase strictly across a clock reset, with a warning.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from video_builders import (
    cut_copy,
    damage_packet,
    encode_h264,
    encode_interlaced_mpeg2,
    mux_tracks,
    ped2_frames,
)

from anomstream.pipeline.cli import main
from anomstream.pipeline.sources.base import Frame
from anomstream.pipeline.sources.resolve import resolve_inputs
from anomstream.pipeline.sources.video import StreamClock, VideoFileSource
from anomstream.pipeline.store import FrameStatus, open_results, result_arrays, stream_key
from anomstream.pipeline.store.accounting import StreamAccounting
from anomstream.pipeline.stream.rows import unscored_rows
from anomstream.pipeline.stream.windows import EndOfStream, WindowBatch, window_batches

SCORED, WARMUP, GAP, DECODE_ERROR = (int(s) for s in (FrameStatus.SCORED, FrameStatus.WARMUP, FrameStatus.SOURCE_GAP,
                                                       FrameStatus.DECODE_ERROR))


@pytest.fixture(scope="module")
def frames(ped2) -> list[np.ndarray]:
    return ped2_frames(ped2, 48)


@pytest.fixture(scope="module")
def clip(frames, tmp_path_factory) -> Path:
    """48 frames of H.264 in mp4: a keyframe every 12 frames, B-frames (decode order != display order)."""
    return encode_h264(frames, tmp_path_factory.mktemp("damage") / "clip.mp4")


@pytest.fixture(scope="module")
def clean(clip) -> list[Frame]:
    return list(VideoFileSource(clip).frames())


@pytest.fixture(scope="session")
def field2_cases(shared_data) -> Path:
    folder = shared_data.parent / "cases" / "field2"
    if not (folder / "README.md").is_file():
        pytest.skip(f"field cases round 2 not found at {folder}")
    return folder


def _statuses(frames, window_length: int = 5, batch_size: int = 8, skip_before: int = 0) -> list[int]:
    items = list(window_batches(iter(frames), "clip", window_length, batch_size, 16, 1, skip_before))
    assert isinstance(items[-1], EndOfStream) and items[-1].error is None
    return [int(s) for b in items if isinstance(b, WindowBatch) for s in b.status]


# --- kind 1: a damaged stream is still a stream -------------------------------------------------

def test_a_refused_packet_costs_its_own_frame_only(clip, clean, tmp_path):
    bad = tmp_path / "bad.mp4"
    assert damage_packet(clip, bad, 20) == 19  # packet 20 in decode order is frame 19 shown
    source = VideoFileSource(bad)
    decoded = list(source.frames())
    assert [f.index for f in decoded] == list(range(48))
    assert [f.index for f in decoded if f.damaged] == [19]
    assert [f.timestamp for f in decoded] == [f.timestamp for f in clean]
    for frame in decoded[:19] + decoded[24:]:  # before the damage, and from the next keyframe on: the clean pictures
        np.testing.assert_array_equal(frame.image, clean[frame.index].image)
    assert source.warnings == [f"{bad}: damaged video: 1 frame(s) could not be decoded (frame 19: Invalid data found "
                               f"when processing input); status decode_error, not scored"]
    statuses = _statuses(decoded)
    assert statuses == [WARMUP] * 4 + [SCORED] * 15 + [DECODE_ERROR] + [GAP] * 4 + [SCORED] * 24


def test_damage_the_decoder_conceals_is_a_decode_error(clip, clean, tmp_path):
    bad = tmp_path / "concealed.mp4"
    assert damage_packet(clip, bad, 20, middle=True) == 19
    source = VideoFileSource(bad)
    decoded = list(source.frames())
    assert [f.index for f in decoded] == list(range(48)) and [f.index for f in decoded if f.damaged] == [19]
    assert np.abs(decoded[19].image.astype(int) - clean[19].image).max() > 0  # a picture, concealed
    assert source.warnings == [f"{bad}: damaged video: 1 frame(s) decoded damaged (frame 19: concealed by the decoder "
                               f"or missing a reference); status decode_error, not scored"]


def test_a_cut_copy_starts_with_decode_errors_until_its_first_keyframe(clip, clean, tmp_path):
    """A stream copy from packet 5 on (frames 5-47 of the clip, shown as 0-42): its frames before
    the keyframe (the clip's frame 12) miss their references; FFmpeg flags them corrupt."""
    cut = cut_copy(clip, tmp_path / "cut.mkv", 5)
    source = VideoFileSource(cut)
    decoded = list(source.frames())
    assert [f.index for f in decoded] == list(range(43))
    assert [f.index for f in decoded if f.damaged] == list(range(7))
    np.testing.assert_allclose([f.timestamp for f in decoded], np.arange(43) / 10, atol=1e-9)
    for frame in decoded[7:]:
        np.testing.assert_array_equal(frame.image, clean[frame.index + 5].image)
    assert source.warnings == [f"{cut}: damaged video: 7 frame(s) decoded damaged (frames 0-6: concealed by the "
                               f"decoder or missing a reference); status decode_error, not scored"]
    assert _statuses(decoded) == [DECODE_ERROR] * 7 + [GAP] * 4 + [SCORED] * 32


def test_a_lost_keyframe_costs_its_group_of_pictures_only(clip, clean, tmp_path):
    """The keyframe of frames 12-23 refused: FFmpeg shows nothing of 13-21 (they depend on it) and
    shows 22 and 23, concealed, out of order; every frame keeps its row, in order."""
    bad = tmp_path / "keyframe.mp4"
    assert damage_packet(clip, bad, 12) == 12
    source = VideoFileSource(bad)
    decoded = list(source.frames())
    assert [f.index for f in decoded] == list(range(48))
    assert [f.index for f in decoded if f.damaged] == list(range(12, 24))
    assert [f.timestamp for f in decoded] == [f.timestamp for f in clean]
    for frame in decoded[:12] + decoded[24:]:
        np.testing.assert_array_equal(frame.image, clean[frame.index].image)
    assert source.warnings == [
        f"{bad}: damaged video: 1 frame(s) could not be decoded (frame 12: Invalid data found when processing input); "
        f"9 frame(s) could not be decoded (frames 13-21: a frame it depends on was lost); 2 frame(s) decoded damaged "
        f"(frames 22-23: concealed by the decoder or missing a reference); status decode_error, not scored"]


def test_interlaced_open_gop_mpeg2_whole_and_cut(frames, tmp_path):
    """The whole recording decodes every frame, none damaged; a stream copy from packet 5 on (frames
    4, 5, 7-47: packet 4 held frame 6) keeps a row for each of its frames before its first I-frame,
    which FFmpeg's MPEG-2 decoder skips (the B-frames of the open GOP included)."""
    whole = encode_interlaced_mpeg2(frames, tmp_path / "dvb.ts")
    source = VideoFileSource(whole)
    decoded = list(source.frames())
    assert [f.index for f in decoded] == list(range(48)) and not any(f.damaged for f in decoded)
    assert source.warnings == [] and np.all(np.diff([f.timestamp for f in decoded]) > 0)
    cut = cut_copy(whole, tmp_path / "dvb_cut.mkv", 5)
    source = VideoFileSource(cut)
    decoded = list(source.frames())
    assert [f.index for f in decoded] == list(range(43)) and [f.index for f in decoded if f.damaged] == list(range(7))
    assert source.warnings == [f"{cut}: damaged video: 7 frame(s) could not be decoded (frames 0-6: before the first "
                               f"keyframe); status decode_error, not scored"]
    whole_images = [f.image for f in VideoFileSource(whole).frames()]
    for frame in decoded[7:]:  # from the I-frame (the recording's frame 12) on, the recording's own pictures
        np.testing.assert_array_equal(frame.image, whole_images[frame.index + 5])


def test_a_decode_error_breaks_windows_as_a_gap_does():
    images = [Frame("clip", i, i / 10, np.full((16, 16, 3), i * 10, np.uint8), damaged=i == 8) for i in range(20)]
    items = list(window_batches(iter(images), "clip", 5, 8, 16, 1))
    batches = [b for b in items if isinstance(b, WindowBatch)]
    assert [int(s) for b in batches for s in b.status] == [WARMUP] * 4 + [SCORED] * 4 + [DECODE_ERROR] + [GAP] * 4 + [SCORED] * 7
    for batch in batches:  # no scored window holds frame 8
        for window, target in zip(batch.windows(), batch.frame_index[batch.valid]):
            np.testing.assert_array_equal(window[:, 0, 0, 0], np.arange(target - 4, target + 1) * 10)
            assert target < 8 or target >= 13
    assert items[-1].frames == 20  # the damaged frame is a row
    # a resume after 8 rows goes on with the same statuses (the damaged frame is a row like any other)
    assert _statuses(images, skip_before=8) == [DECODE_ERROR] + [GAP] * 4 + [SCORED] * 7
    rows = unscored_rows(batches[1], result_arrays((16, 16), []), dropped=True)  # a batch dropped (live, behind)
    assert rows["status"].tolist() == [DECODE_ERROR] + [GAP] * 4 + [int(FrameStatus.DROPPED_BEHIND)] * 3
    assert not rows["valid"].any() and np.isnan(rows["score"]).all() and rows["frame_index"].tolist() == list(range(8, 16))
    accounting = StreamAccounting(live=False)
    accounting.count(np.concatenate([b.status for b in batches]))
    assert accounting.attrs()["frame_counts"] == {"scored": 11, "warmup": 4, "dropped_behind": 0, "source_gap": 4,
                                                  "decode_error": 1, "frozen": 0}


def test_field2_case_01_corrupt_packet_mid_file_is_scored_past_the_damage(ray_session, field2_cases, tmp_path, capsys):
    folder = field2_cases / "01-corrupt-packets-mid-file"
    out = tmp_path / "c.zarr"
    code = main(["score", str(folder / "clean.mp4"), str(folder / "corrupt.mp4"), "--out", str(out), "--replicas", "1",
                 "--quiet"])
    assert capsys.readouterr().err.splitlines() == [
        f"warning: corrupt: {folder / 'corrupt.mp4'}: damaged video: 1 frame(s) could not be decoded (frame 20: Invalid "
        f"data found when processing input); status decode_error, not scored"]
    assert code == 0
    root = open_results(out)
    clean, corrupt = root["clean"], root["corrupt"]
    assert int(corrupt.attrs["written"]) == 48 and corrupt.attrs["complete"] is True
    assert corrupt["frame_index"][:].tolist() == list(range(48))
    assert corrupt["status"][:].tolist() == [WARMUP] * 4 + [SCORED] * 16 + [DECODE_ERROR] + [GAP] * 4 + [SCORED] * 23
    assert corrupt.attrs["frame_counts"]["decode_error"] == 1
    np.testing.assert_array_equal(corrupt["timestamp"][:], clean["timestamp"][:])
    raw, reference = corrupt["score_raw"][:], clean["score_raw"][:]
    np.testing.assert_allclose(raw[28:], reference[28:], rtol=1e-5)  # windows of frames decoded as in the clean copy
    assert np.all(np.abs(raw[25:28] / reference[25:28] - 1) < 0.3)  # windows holding frames 21-23, concealed by FFmpeg
    np.testing.assert_array_equal(raw[:20], reference[:20])


# --- kind 2: every video track is a camera -------------------------------------------------------

@pytest.mark.parametrize("name, codec", [("dual.mp4", "libx264"), ("dual.mkv", "libx264"), ("dual.avi", "mjpeg")])
def test_every_video_track_is_a_stream(frames, tmp_path, name, codec):
    front, rear = frames[:12], [np.ascontiguousarray(f[:, ::-1]) for f in frames[:12]]
    path = mux_tracks(tmp_path / name, [front, rear], [codec, codec])
    inputs = resolve_inputs([str(path)])
    assert [s.stream_id for s in inputs.sources] == ["dual", "dual#1"] and not inputs.failed and not inputs.left_out
    for source, images in zip(inputs.sources, (front, rear)):
        decoded = [f.image for f in source.frames()]
        assert len(decoded) == 12 and source.warnings == [] and source.describe() == str(path.absolute())
        for k, image in enumerate(decoded):  # each stream holds its own camera's pictures, in order
            errors = [np.abs(image.astype(int) - other.astype(int)).mean() for other in front + rear]
            assert int(np.argmin(errors)) == k + (12 if images is rear else 0)
    named = resolve_inputs([str(path)], stream_ids=["cab"]).sources
    assert [s.stream_id for s in named] == ["cab", "cab#1"] and stream_key("cab#1") == "cab#1"


def test_a_thumbnail_track_is_named_not_scored(frames, tmp_path):
    """Matroska has no attached-picture flag: a one-picture track is a thumbnail, named in a warning;
    the two cameras after it are streams (the main one named after the file, the other by its
    index among the video tracks, FFmpeg's 0:v:2)."""
    path = mux_tracks(tmp_path / "thumb.mkv", [frames[:1], frames[:12], frames[12:24]], ["mjpeg", "libx264", "libx264"],
                      rates=[1, 10, 10])
    sources = resolve_inputs([str(path)]).sources
    assert [s.stream_id for s in sources] == ["thumb", "thumb#2"]
    expected = [f"{path}: video track 0 (mjpeg) left out: a still picture (thumbnail), not a camera"]
    assert sources[0].warnings == expected and sources[1].warnings == []
    for _ in range(2):  # decoded twice (a stream decoded again): named once
        assert sum(1 for _ in sources[0].frames()) == 12 and sources[0].warnings == expected


# --- kind 3: time only moves forward -------------------------------------------------------------

def _times(path: Path) -> list[float]:
    return [f.timestamp for f in VideoFileSource(path).frames()]


def test_a_clock_reset_inside_a_file_keeps_time_moving(frames, tmp_path):
    """Two MPEG-TS segments appended, the second at another size, each with its clock from 0."""
    first = encode_h264(frames[:12], tmp_path / "a.ts")
    second = encode_h264([cv2.resize(f, (352, 288)) for f in frames[12:24]], tmp_path / "b.ts")
    joined = tmp_path / "day.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    before, after = _times(first), _times(second)
    source = VideoFileSource(joined)
    decoded = list(source.frames())
    assert [f.index for f in decoded] == list(range(24)) and decoded[12].image.shape == (288, 352, 3)
    times = np.array([f.timestamp for f in decoded])
    assert np.all(np.diff(times) > 0)
    np.testing.assert_allclose(times, before + [before[-1] + 0.1 * (k + 1) for k in range(12)], atol=1e-9)
    assert source.warnings == [f"{joined}: the clock jumped back at frame 12, from {before[-1]:.3f} s to {after[0]:.3f} s "
                               f"(a timestamp reset); stored times go on from {before[-1] + 0.1:.3f} s"]
    assert _statuses(decoded) == [WARMUP] * 4 + [SCORED] * 20  # one recording: windows go on


def test_mpegts_leaps_forward_past_ffmpegs_threshold_only(frames, tmp_path):
    """FFmpeg corrects an MPEG-TS clock that leaps forward by more than 10 s; a smaller step is a
    real pause and kept."""
    first = encode_h264(frames[:12], tmp_path / "a.ts")
    for name, start_s, leaps in (("leap.ts", 100.0, True), ("pause.ts", 6.2, False)):
        second = encode_h264(frames[12:24], tmp_path / f"b_{name}", first_pts=round(start_s * 10))
        joined = tmp_path / name
        joined.write_bytes(first.read_bytes() + second.read_bytes())
        before, after = _times(first), _times(second)
        source = VideoFileSource(joined)
        times = [f.timestamp for f in source.frames()]
        if leaps:
            np.testing.assert_allclose(times[12:], [before[-1] + 0.1 * (k + 1) for k in range(12)], atol=1e-9)
            assert source.warnings == [f"{joined}: the clock jumped forward at frame 12, from {before[-1]:.3f} s to "
                                       f"{after[0]:.3f} s (a timestamp discontinuity); stored times go on from "
                                       f"{before[-1] + 0.1:.3f} s"]
        else:
            assert times == before + after and source.warnings == []


def test_stream_clock_counts_what_it_does_not_show():
    warnings: list[str] = []
    clock = StreamClock(Path("cam.mp4"), 10.0, discontinuous=False, warnings=warnings)
    raw = [0.0, 0.1, 0.1, None, 0.0, *([5.0, 0.0] * 5), 20.0]  # a repeated time, no time, six resets more
    stored = [clock.stamp(t, k) for k, t in enumerate(raw)]
    clock.finish()
    assert np.all(np.diff(stored) > 0) and stored[-1] == pytest.approx(stored[-2] + 20.0 - 0.0)
    np.testing.assert_allclose(stored[:5], [0.0, 0.1, 0.2, 0.3, 0.4])
    assert warnings[:2] == [
        "cam.mp4: the clock jumped back at frame 2, from 0.100 s to 0.100 s (a timestamp reset); stored times go on from 0.200 s",
        "cam.mp4: the clock jumped back at frame 4, from 0.100 s to 0.000 s (a timestamp reset); stored times go on from 0.400 s"]
    assert len(warnings) == 6 and warnings[-1] == "cam.mp4: the clock jumped 2 more time(s); stored times go on increasing"


def test_field2_case_05_clock_restart_between_appended_segments(field2_cases):
    folder = field2_cases / "05-resolution-change-concat"
    source = VideoFileSource(folder / "day.ts")
    decoded = list(source.frames())
    reference = _times(folder / "ref.ts")
    assert [f.index for f in decoded] == list(range(48)) and len(reference) == 48
    np.testing.assert_allclose([f.timestamp for f in decoded], reference, atol=1e-9)  # 2.2 2.3 2.4 2.5 2.6 2.7 ...
    assert source.warnings == [f"{folder / 'day.ts'}: the clock jumped back at frame 24, from 2.500 s to 0.200 s (a "
                               f"timestamp reset); stored times go on from 2.600 s"]
    assert _statuses(decoded) == [WARMUP] * 4 + [SCORED] * 44
