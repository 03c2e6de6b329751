import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from anomstream.pipeline.encode import encode_video
from anomstream.pipeline.errors import SourceError
from anomstream.pipeline.sources.base import Frame, Gap
from anomstream.pipeline.sources.camera import CameraSource, Reconnect
from anomstream.pipeline.sources.folders import FrameFolderSource, ImageListSource
from anomstream.pipeline.sources.resolve import open_sources
from anomstream.pipeline.sources.video import VideoFileSource


def _write_numbered(folder: Path, numbers: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        cv2.imwrite(str(folder / f"{n}.png"), np.full((8, 8, 3), n, np.uint8))


def test_frame_folder_numeric_order(tmp_path):
    _write_numbered(tmp_path / "clip", [10, 2, 1, 33, 3])
    source = FrameFolderSource(tmp_path / "clip")
    values = [int(frame.image[0, 0, 0]) for frame in source.frames()]
    assert values == [1, 2, 3, 10, 33]
    assert [p.name for p in source.paths] == ["1.png", "2.png", "3.png", "10.png", "33.png"]


def test_ped2_folder_exact_count_and_order(ped2):
    folder = ped2 / "testing" / "frames" / "01"
    frames = list(FrameFolderSource(folder).frames())
    assert len(frames) == 180
    assert [f.index for f in frames] == list(range(180))
    for k in (0, 9, 179):
        expected = cv2.cvtColor(cv2.imread(str(folder / f"{k:03d}.jpg")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(frames[k].image, expected)


def test_ped2_mp4_encoding_keeps_count_and_order(ped2, tmp_path):
    folder = ped2 / "testing" / "frames" / "01"
    originals = [f.image for f in FrameFolderSource(folder).frames()][:40]
    video = tmp_path / "01.mp4"
    assert encode_video(originals, video) == 40
    decoded = [f.image for f in VideoFileSource(video).frames()]
    assert len(decoded) == 40
    for k, image in enumerate(decoded):
        errors = [np.abs(image.astype(int) - o.astype(int)).mean() for o in originals]
        assert int(np.argmin(errors)) == k


def test_bundled_clip_decodes_all_frames(sample_clip):
    source = VideoFileSource(sample_clip)
    frames = list(source.frames())
    assert source.frame_count == len(frames) == 180
    assert frames[0].image.shape == (240, 360, 3)
    assert [f.stream_id for f in frames[:1]] == ["ped2_test02"]


def test_avenue_and_vtest_decode(shared_data):
    assert sum(1 for _ in VideoFileSource(shared_data / "avenue" / "testing_videos" / "08.avi").frames()) == 36
    vtest = VideoFileSource(shared_data / "vtest.avi")
    first = [f for _, f in zip(range(12), vtest.frames())]
    assert vtest.frame_count == 795 and len(first) == 12 and first[0].image.shape == (576, 768, 3)


def test_folder_of_clips_gives_one_stream_each(ped2):
    sources = open_sources(str(ped2 / "testing" / "frames"))
    assert [s.stream_id for s in sources] == [f"{k:02d}" for k in range(1, 13)]
    assert sum(s.frame_count for s in sources) == 2010


def test_image_folder_skips_undecodable(tmp_path):
    _write_numbered(tmp_path, [1, 2])
    (tmp_path / "3.png").write_bytes(b"not an image")
    (source,) = open_sources(str(tmp_path), still_images=True)
    assert isinstance(source, ImageListSource)
    assert [int(f.image[0, 0, 0]) for f in source.frames()] == [1, 2]
    assert len(source.warnings) == 1 and "3.png: cannot decode image" in source.warnings[0]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "no such file or folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "folder holds no images, frame folders or videos"),
    (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "notes.txt: cannot decode video"),
])
def test_bad_paths_name_the_path(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(SourceError, match=message) as error:
        open_sources(str(path))
    assert str(path) in str(error.value)


def test_garbage_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(SourceError, match=r"bad.mp4: cannot decode video"):
        VideoFileSource(bad)


def test_unreachable_camera_fails_fast():
    source = CameraSource("rtsp://127.0.0.1:9/none", open_timeout_s=2)
    with pytest.raises(SourceError, match="rtsp://127.0.0.1:9/none: camera is unreachable"):
        next(source.frames())


def test_http_camera_streams_frames_until_max(http_server):
    sources = open_sources(f"{http_server}/vtest.avi", max_frames=30)
    assert len(sources) == 1 and isinstance(sources[0], CameraSource) and sources[0].is_live
    frames = list(sources[0].frames())
    assert len(frames) == 30 and [f.index for f in frames] == list(range(30))
    assert frames[0].image.shape == (576, 768, 3)
    assert all(b.timestamp >= a.timestamp for a, b in zip(frames, frames[1:]))


def test_camera_reconnects_when_the_stream_drops(http_server):
    # Avenue test video 08 has 36 frames: served as an IP camera it "drops" after frame 36.
    url = f"{http_server}/avenue/testing_videos/08.avi"
    source = CameraSource(url, max_frames=50, reconnect=Reconnect(backoff_s=0.01))
    items = list(source.frames())
    frames = [f for f in items if isinstance(f, Frame)]
    assert [f.index for f in frames] == list(range(50)) and source.reconnections == 1
    np.testing.assert_array_equal(frames[36].image, frames[0].image)  # the reopened stream starts again
    gap = items[36]  # between the last frame before the drop and the first after it
    assert isinstance(gap, Gap) and gap.kind == "disconnect"
    assert gap.start == frames[35].timestamp and gap.end == frames[36].timestamp

    no_retry = CameraSource(url, max_frames=50, reconnect=Reconnect(attempts=0))
    kept = []
    with pytest.raises(SourceError, match=r"08\.avi: camera stopped sending frames after frame 36 \(0 reconnection"):
        for frame in no_retry.frames():
            kept.append(frame)
    assert len(kept) == 36


def test_line_scan_recording_becomes_overlapping_tiles(ped2, tmp_path):
    """Six Ped2 frames read as strips of one continuous web: 1440 rows -> tiles of 240 every 120 rows."""
    folder = tmp_path / "strips"
    folder.mkdir()
    for path in sorted((ped2 / "testing" / "frames" / "01").iterdir())[:6]:
        shutil.copy(path, folder / path.name)
    (source,) = open_sources(f"linescan:{folder}?tile=240&stride=120")
    strips = [frame.image for frame in FrameFolderSource(folder).frames()]
    web = np.concatenate(strips)
    tiles = list(source.frames())
    assert len(tiles) == (1440 - 240) // 120 + 1 == 11
    for k, tile in enumerate(tiles):
        assert tile.index == k and tile.image.shape == (240, 360, 3)
        np.testing.assert_array_equal(tile.image, web[120 * k:120 * k + 240])
    assert np.all(np.diff([t.timestamp for t in tiles]) > 0)
    assert source.describe() == f"linescan:{FrameFolderSource(folder).describe()}?tile=240&stride=120"
    with pytest.raises(SourceError, match=r"a line-scan source needs \?tile=H"):
        open_sources(f"linescan:{folder}?stride=4")
    with pytest.raises(SourceError, match=r"line-scan stride must be in 1..tile \(8\), got 9"):
        open_sources(f"linescan:{folder}?tile=8&stride=9")


def test_camera_secrets_and_bad_ports_stay_out_of_names_and_messages():
    camera = CameraSource("rtsp://admin:pw@cam:554/live;token=abc?key=s3cret")
    assert camera.describe() == "rtsp://admin:***@cam:554/live;***?***" and camera.stream_id == "rtsp_cam_554_live"
    with pytest.raises(SourceError, match=r"^http://u:\*\*\*@cam:80a/: not a valid address \(port\)$"):
        CameraSource("http://u:pw@cam:80a/")


def test_a_network_capture_decodes_straight_to_the_size_frames_are_used_at(shared_data):
    """vtest.avi (768x576): to the model's 128 px square, or to the view's 640 px picture in its
    own aspect; near the full picture scaled by OpenCV, as the windows do, but not the same (hence
    opt-in: ``live --scale-in-decoder``)."""
    from anomstream.pipeline.sources.network import DecodeSize, Decoding, NetworkCapture
    from anomstream.pipeline.stream.preprocess import prepare_frame

    assert DecodeSize(128).output(768, 576) == (128, 128) and DecodeSize(128).output(100, 576) is None
    assert DecodeSize(128, 640).output(768, 576) == (640, 480) and DecodeSize(128, 640).output(640, 360) is None
    assert DecodeSize(256, 320).output(1920, 800) is None  # the picture would be narrower than the model's input
    video = str(shared_data / "vtest.avi")
    images = {}
    for size in (None, DecodeSize(128), DecodeSize(128, 640)):
        capture = NetworkCapture(video, 5.0, 5.0, size=size)
        images[size] = [capture.read() for _ in range(20)][-1]
        capture.release()
    full, model, picture = images.values()
    assert (full.shape, model.shape, picture.shape) == ((576, 768, 3), (128, 128, 3), (480, 640, 3))
    expected = prepare_frame(full, 128, 1).astype(int)
    for image in (model, picture):
        difference = np.abs(prepare_frame(image, 128, 1).astype(int) - expected)
        assert 0.3 < difference.mean() < 1.5 and np.percentile(difference, 99) <= 3
    camera = CameraSource("rtsp://127.0.0.1:9/cam")
    camera.use_size(128, 640)
    assert camera.decode_size is None  # as decoded, unless asked
    camera = CameraSource("rtsp://127.0.0.1:9/cam", decoding=Decoding(scale_in_decoder=True))
    camera.use_size(128)
    assert camera.decode_size == DecodeSize(128)


def test_a_picture_the_decoder_held_back_at_a_read_timeout_is_no_sign_of_life():
    """A hung RTSP camera: the read times out after 2.5 s and FFmpeg's decoder gives out the
    picture it held, taken a frame after the last one (measured: the camera then looked live for
    another read timeout). Told by the stream's own timestamps, whatever the camera's clock says
    against this machine's: a picture taken after the silence is a real one."""
    from anomstream.pipeline.sources.network import NetworkCapture

    capture = NetworkCapture.__new__(NetworkCapture)  # the rule alone: no connection needed
    capture.read_timeout_s, capture._stamp = 2.5, None
    assert not capture._held_back(2.51, 100.1)  # a connection's first picture
    capture._stamp = 100.0
    assert capture._held_back(2.51, 100.1)  # a frame after the last one, a read timeout later
    assert not capture._held_back(2.51, 102.6)  # taken after the silence: the camera came back
    assert not capture._held_back(0.4, 100.1)  # a picture in time
    assert not capture._held_back(2.51, None)  # no timestamp: cannot tell, taken
