"""Inputs users really have (issue 15), without Ray: files judged by content, display rotation,
paths that look like other things, one bad file among good ones, header frame counts."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest
from video_builders import (
    CONTAINERS,
    ped2_frames,
    with_avi_frame_count,
    with_display_matrix,
    write_containers,
)

from anomstream.pipeline.datasets.specs import parse_dataset_spec
from anomstream.pipeline.encode import encode_video
from anomstream.pipeline.errors import SourceError
from anomstream.pipeline.sources.camera import CameraSource, Reconnect
from anomstream.pipeline.sources.folders import FrameFolderSource
from anomstream.pipeline.sources.probe import NotAVideoError, probe_video
from anomstream.pipeline.sources.resolve import SourceOptions, open_sources, resolve_inputs
from anomstream.pipeline.sources.video import VideoFileSource, upright


def _images(source) -> list[np.ndarray]:
    return [frame.image for frame in source.frames()]


@pytest.fixture(scope="module")
def frames(ped2) -> list[np.ndarray]:
    return ped2_frames(ped2)


@pytest.fixture(scope="module")
def containers(frames, tmp_path_factory) -> list[Path]:
    return write_containers(frames, tmp_path_factory.mktemp("containers"))


# --- kind 2: display orientation ---------------------------------------------------------------

@pytest.mark.parametrize("backend", ["pyav", "opencv"])
def test_field_02_rotated_clip_decodes_as_the_upright_one(field_cases, backend):
    folder = field_cases / "02-rotation-metadata"
    upright_frames = _images(VideoFileSource(folder / "upright.mp4", backend=backend))
    rotated_frames = _images(VideoFileSource(folder / "rotated.mp4", backend=backend))
    assert len(upright_frames) == len(rotated_frames) == 12
    for a, b in zip(upright_frames, rotated_frames):
        assert b.shape == a.shape == (240, 360, 3)
        assert np.abs(a.astype(int) - b).mean() < 1.0  # two encodes of the same frames; sideways: ~77


@pytest.mark.parametrize("matrix, turns", [
    ((1, 0, 0, 1), 0), ((0, 1, -1, 0), -1), ((0, -1, 1, 0), 1), ((-1, 0, 0, -1), 2),
])
def test_every_quarter_turn_is_applied_as_ffmpeg_applies_it(field_cases, tmp_path, matrix, turns):
    """The upright clip with each display matrix: PyAV frames are the stored ones turned, and equal
    to OpenCV's (FFmpeg's own auto-rotation) pixel for pixel."""
    stored = _images(VideoFileSource(field_cases / "02-rotation-metadata" / "upright.mp4"))
    clip = with_display_matrix(field_cases / "02-rotation-metadata" / "upright.mp4", tmp_path / "m.mp4", *matrix)
    pyav = _images(VideoFileSource(clip, backend="pyav"))
    opencv = _images(VideoFileSource(clip, backend="opencv"))
    assert len(pyav) == len(opencv) == 12
    for raw, a, b in zip(stored, pyav, opencv):
        np.testing.assert_array_equal(a, np.rot90(raw, turns))
        np.testing.assert_array_equal(a, b)


def test_upright_turns_counter_clockwise_degrees():
    image = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(upright(image, 90.0), [[2, 5], [1, 4], [0, 3]])
    np.testing.assert_array_equal(upright(image, -90.0), [[3, 0], [4, 1], [5, 2]])
    np.testing.assert_array_equal(upright(image, 180.0), image[::-1, ::-1])
    assert upright(image, 0.0) is image


# --- kinds 3 and 4: a file is a video by its content -----------------------------------------

def test_every_container_is_a_video_by_content(containers):
    for path in containers:
        (source,) = open_sources(str(path))
        images = _images(source)
        assert len(images) == 12 and images[0].shape == (144, 176, 3), path.name
        assert source.warnings == [], path.name


def test_folder_of_containers_names_what_it_leaves_out(containers, field_cases, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(containers[0].parent, folder)
    shutil.copy(field_cases / "04-audio-with-cover-art" / "audio_cover.mp4", folder / "voice memo.m4a")
    (folder / "README.txt").write_text("camera 1, 9:00")
    (folder / "thumbnail.jpg").write_bytes((field_cases / "06-numeric-folder-name/clips/01/000.jpg").read_bytes())
    (folder / "empty_dir").mkdir()
    inputs = resolve_inputs([str(folder)])
    assert sorted(s.stream_id for s in inputs.sources) == sorted(Path(name).stem for name, *_ in CONTAINERS)
    assert inputs.failed == []
    assert sorted(Path(r.path).name for r in inputs.left_out) == [
        "README.txt", "empty_dir", "thumbnail.jpg", "voice memo.m4a"]
    reasons = {Path(r.path).name: r.reason for r in inputs.left_out}
    assert reasons["voice memo.m4a"] == f"{folder / 'voice memo.m4a'}: no video stream (the file holds audio and cover art)"
    assert reasons["README.txt"] == f"{folder / 'README.txt'}: not a video or an image"
    assert reasons["thumbnail.jpg"] == f"{folder / 'thumbnail.jpg'}: an image among videos and frame folders (not read)"


@pytest.mark.parametrize("name, message", [
    ("audio_cover.mp4", "no video stream (the file holds audio and cover art)"),
    ("audio_only.mp4", "no video stream (the file holds audio)"),
])
def test_field_04_cover_art_is_never_the_video(field_cases, name, message):
    path = field_cases / "04-audio-with-cover-art" / name
    with pytest.raises(NotAVideoError) as error:
        probe_video(path)
    assert str(error.value) == f"{path}: {message}"
    inputs = resolve_inputs([str(path)])
    assert inputs.sources == [] and [r.reason for r in inputs.failed] == [f"{path}: {message}"]


def test_an_image_file_is_a_still_for_still_models_only(field_cases):
    image = field_cases / "06-numeric-folder-name" / "clips" / "01" / "000.jpg"
    (still,) = open_sources(str(image), still_images=True)
    assert still.stream_id == "000" and len(_images(still)) == 1 and still.items() == [str(image)]
    with pytest.raises(SourceError, match=r"000.jpg: a still image, not a video; score the folder that holds it$"):
        open_sources(str(image))


def test_field_05_mpegts_recordings_in_a_folder_and_alone(field_cases):
    folder = field_cases / "05-mpegts-recordings" / "recordings"
    inputs = resolve_inputs([str(folder)])
    assert [s.stream_id for s in inputs.sources] == ["cam1_0800", "cam1_0900", "cam1_1000"]
    assert [len(_images(s)) for s in inputs.sources] == [12, 12, 12]
    assert inputs.failed == inputs.left_out == []
    (single,) = open_sources(str(folder / "cam1_0900.ts"))
    assert len(_images(single)) == 12 and single.frame_count is None  # MPEG-TS headers hold no count


def test_an_existing_path_always_means_that_path(field_cases, tmp_path, monkeypatch):
    monkeypatch.chdir(field_cases / "06-numeric-folder-name" / "clips")
    (source,) = open_sources("01")
    assert isinstance(source, FrameFolderSource) and source.frame_count == 12 and source.stream_id == "01"
    assert Path(source.describe()) == (field_cases / "06-numeric-folder-name" / "clips" / "01").resolve()
    monkeypatch.chdir(tmp_path)
    for spec, device, stream_id in [("camera:1", 1, "camera_1"), ("3", 3, "camera_3")]:
        (camera,) = open_sources(spec)
        assert isinstance(camera, CameraSource) and camera.device == device and camera.stream_id == stream_id
    (device_path,) = open_sources("/dev/video7")
    assert isinstance(device_path, CameraSource) and device_path.device is None and device_path.address == "/dev/video7"
    with pytest.raises(SourceError, match=r"^camera:x: a camera device is camera:N with N its index"):
        open_sources("camera:x")
    # a folder named like a dataset spec or a camera is still a folder
    for name in ("mtd:frames", "camera:0", "rtsp:"):
        shutil.copytree(field_cases / "06-numeric-folder-name" / "clips" / "01", tmp_path / name)
        (source,) = open_sources(name)
        assert isinstance(source, FrameFolderSource) and source.frame_count == 12, name


@pytest.mark.parametrize("name", ["clip #1", "50% off?", "día 3 – überwachung", "7", "a?split=train"])
def test_any_legal_path_survives_resolution(frames, tmp_path, name):
    video = tmp_path / f"{name}.mp4"
    encode_video(frames, video, fps=10)
    (source,) = open_sources(str(video))
    assert source.describe() == str(video) and source.stream_id == name and len(_images(source)) == 12
    folder = tmp_path / name
    folder.mkdir()
    for k, image in enumerate(frames[:3]):
        np.save(folder / f"{k}.npy", image)  # not images: left out
    shutil.copy(video, folder / "inner.mp4")
    (inner,) = resolve_inputs([str(folder)]).sources
    assert inner.describe() == str(folder / "inner.mp4")


def test_dataset_root_with_question_mark_and_hash_is_not_parsed(mtd_like):
    spec = parse_dataset_spec(f"mvtec:{mtd_like}")
    assert spec.root == mtd_like and spec.split == "test"
    spec = parse_dataset_spec(f"mvtec:{mtd_like}?split=train")
    assert spec.root == mtd_like and spec.split == "train"


@pytest.fixture
def mtd_like(tmp_path) -> Path:
    root = tmp_path / "cat #2?v=1%"
    (root / "train" / "good").mkdir(parents=True)
    (root / "test").mkdir()
    return root


def test_thumbnail_track_is_not_the_video(frames, tmp_path):
    """Matroska has no attached-picture flag: a one-frame thumbnail track before the real one loses."""
    clip = tmp_path / "thumb_first.mkv"
    with av.open(str(clip), mode="w") as container:
        thumbnail = container.add_stream("mjpeg", rate=1)
        video = container.add_stream("libx264", rate=10)
        for stream in (thumbnail, video):
            stream.width, stream.height = 176, 144
        thumbnail.pix_fmt, video.pix_fmt = "yuvj420p", "yuv420p"
        for packet in thumbnail.encode(av.VideoFrame.from_ndarray(frames[0], format="rgb24")):
            container.mux(packet)
        for image in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for stream in (thumbnail, video):
            for packet in stream.encode():
                container.mux(packet)
    assert probe_video(clip).stream_index == 1
    assert len(_images(VideoFileSource(clip))) == 12


def test_what_is_not_a_file_or_folder(tmp_path):
    (source_error,) = resolve_inputs(["/dev/null"]).failed
    assert source_error.reason == "/dev/null: not a regular file (a device, pipe or socket)"


# --- kind 6: one bad input never stops the others; header counts are estimates --------------

def test_broken_link_in_a_folder_fails_alone(containers, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(containers[0], folder / "good.ts")
    (folder / "dead.mp4").symlink_to(tmp_path / "nowhere.mp4")
    inputs = resolve_inputs([str(folder)])
    assert [s.stream_id for s in inputs.sources] == ["good"]
    assert [r.reason for r in inputs.failed] == [f"{folder / 'dead.mp4'}: cannot decode video (No such file or directory)"]

def test_field_11_empty_clip_is_a_failure_of_its_own(field_cases):
    folder = field_cases / "11-empty-clip-in-folder" / "clips"
    inputs = resolve_inputs([str(folder)])
    assert sorted(s.stream_id for s in inputs.sources) == ["cam_0800", "cam_1000"]
    assert [r.reason for r in inputs.failed] == [f"{folder / 'cam_0900.mp4'}: empty file (0 bytes)"]


def test_bad_specs_fail_alone(containers, tmp_path):
    garbage = tmp_path / "garbage.mkv"
    garbage.write_bytes(bytes(range(256)) * 64)
    inputs = resolve_inputs([str(tmp_path / "missing.mp4"), str(containers[0]), str(garbage), "camera:x"])
    assert [s.stream_id for s in inputs.sources] == ["cam"]
    assert [r.reason for r in inputs.failed] == [
        f"{tmp_path / 'missing.mp4'}: no such file or folder",
        f"{garbage}: cannot decode video (Invalid data found when processing input)",
        "camera:x: a camera device is camera:N with N its index (0, 1, ...)",
    ]


def test_header_frame_count_is_an_estimate(frames, tmp_path):
    clip = tmp_path / "clip.avi"
    encode_video(frames, clip, fps=10, codec="mpeg4")
    promised = with_avi_frame_count(clip, tmp_path / "promised.avi", 20)
    with av.open(str(promised)) as container:
        assert container.streams.video[0].frames == 20
    source = VideoFileSource(promised)
    assert len(_images(source)) == 12
    assert source.warnings == [f"{promised}: the container header said 20 frames, the stream ended cleanly after 12"]


def test_a_cut_file_without_an_index_ends_with_a_warning(frames, tmp_path):
    """Matroska holds no frame index: a cut file decodes cleanly to where it stops, and the duration
    in its header tells of the cut. (MPEG-TS has no header at all: FFmpeg estimates its duration
    from the file size, so a cut TS file is simply a shorter recording.)"""
    clip = tmp_path / "whole.mkv"
    encode_video(frames * 2, clip, fps=10)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size * 6 // 10])
    source = VideoFileSource(cut)
    decoded = len(_images(source))
    assert 0 < decoded < 24
    (warning,) = source.warnings
    assert warning.startswith(f"{cut}: the stream ended cleanly after ") and warning.endswith("(a cut file?)")
    whole = VideoFileSource(clip)
    assert len(_images(whole)) == 24 and whole.warnings == []


def test_a_cut_file_is_truncated_not_complete(frames, tmp_path):
    clip = tmp_path / "clip.mp4"
    encode_video(frames * 4, clip, fps=10)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size * 6 // 10])
    source = VideoFileSource(cut)
    frames_before = source.frames()
    kept = 0
    with pytest.raises(SourceError, match=r"cut.mp4: video is truncated: decoded (\d+) of 48 frames") as error:
        for _ in frames_before:
            kept += 1
    assert 10 < kept < 48 and f"decoded {kept} of 48" in str(error.value)


# --- cameras: the first connection is retried ---------------------------------------------------

def test_camera_that_comes_up_late_is_caught(shared_data):
    import socket
    import threading

    from servers import serve_folder

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servers = []
    timer = threading.Timer(2.0, lambda: servers.append(serve_folder(shared_data, port)))
    timer.start()
    try:
        camera = CameraSource(f"http://127.0.0.1:{port}/avenue/testing_videos/08.avi", max_frames=5,
                              open_timeout_s=2, reconnect=Reconnect(backoff_s=0.25, connect_timeout_s=30))
        started = time.time()
        gap, *frames = list(camera.frames())
        assert [f.index for f in frames] == [0, 1, 2, 3, 4]
        # down at the start: a gap from the first failed try to the first frame
        assert gap.kind == "disconnect" and started <= gap.start < started + 1 and gap.end == frames[0].timestamp
    finally:
        timer.join()
        for server in servers:
            server.shutdown()


def test_camera_connect_timeout_names_the_wait():
    camera = CameraSource("rtsp://127.0.0.1:9/none", open_timeout_s=1,
                          reconnect=Reconnect(backoff_s=0.2, connect_timeout_s=1))
    with pytest.raises(SourceError, match=r"^rtsp://127.0.0.1:9/none: camera is unreachable or cannot be opened "
                                          r"\(Connection refused\) \(retried for 1 s\)$"):
        next(camera.frames())


def test_source_options_reach_cameras():
    reconnect = Reconnect(attempts=4, connect_timeout_s=3)
    (camera,) = resolve_inputs(["rtsp://127.0.0.1:9/x"], SourceOptions(max_frames=7, reconnect=reconnect)).sources
    assert camera.max_frames == 7 and camera.reconnect == reconnect
