"""The cameras file of ``anomstream live --cameras``: what it accepts and each one-line refusal.
A live run from a cameras file against a real RTSP server is in tests/test_rtsp.py."""

from __future__ import annotations

import pytest

from anomstream.pipeline.errors import AnomstreamError
from anomstream.pipeline.sources.base import StreamSettings
from anomstream.pipeline.sources.camera import CameraSource
from anomstream.pipeline.sources.cameras_file import apply_cameras, read_cameras


def _file(tmp_path, text: str):
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    return path


def test_cameras_are_read_with_their_own_settings_and_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("GATE_PASSWORD", "gate-secret")
    secret = tmp_path / "yard.pass"
    secret.write_text("yard-secret\n")
    secret.chmod(0o600)
    path = _file(tmp_path, f"""
cameras:
  - name: gate
    url: rtsp://10.0.0.5:554/stream1
    username: viewer
    password_env: GATE_PASSWORD
    threshold: 4.5
    policy: every
    keep_maps: 10
  - name: yard
    url: rtsp://10.0.0.6/live
    username: admin
    password_file: {secret}
    transport: udp
    decoder_threads: 2
  - name: dock
    url: rtsp://10.0.0.7/live
    enabled: false
""")
    cameras = read_cameras(path)
    assert [camera.name for camera in cameras] == ["gate", "yard"]
    sources = [CameraSource(camera.url, stream_id=camera.name) for camera in cameras]
    apply_cameras(sources, cameras)
    gate, yard = sources
    assert gate.settings == StreamSettings("every", 10, 4.5, None) and yard.settings == StreamSettings()
    assert (gate.credentials.user, gate.credentials.password, gate.credentials.origin) == ("viewer", "gate-secret",
                                                                                         "GATE_PASSWORD")
    assert (yard.credentials.user, yard.credentials.password, yard.decoding.transport) == ("admin", "yard-secret", "udp")
    assert (gate.decoding.threads, yard.decoding.threads) == (1, 2)
    assert "secret" not in repr(gate) + repr(yard) + repr(cameras)


@pytest.mark.parametrize(("text", "error"), [
    ("cameras: []\n", "cameras: List should have at least 1 item after validation, not 0"),
    ("cameras:\n  - {name: a, url: rtsp://h/x, fps: 5}\n", "cameras.0.fps: unknown key"),
    ("cameras:\n  - {name: a}\n", "cameras.0.url: Field required"),
    ("cameras:\n  - {name: a b, url: rtsp://h/x}\n",
     "cameras.0.name: letters, digits, '_', '-' and '.' only (it names the stream and its topics)"),
    ("cameras:\n  - {name: a, url: rtsp://h/x}\n  - {name: a, url: rtsp://h/y}\n",
     "cameras.1.name: 'a' is already cameras.0"),
    ("cameras:\n  - {name: a, url: rtsp://h/x, password: hunter2}\n",
     "cameras.0.password: a password in the file; give password_env (an environment variable) or password_file"),
    ("cameras:\n  - {name: a, url: 'rtsp://u:hunter2@h/x'}\n",
     "cameras.0.url: rtsp://***@h/x: a password in the file; give password_env or password_file"),
    ("cameras:\n  - {name: a, url: 'rtsp://u:hun/ter2@h/x'}\n",
     "cameras.0.url: rtsp://***@h/x: a password in the file; give password_env or password_file"),
    ("cameras:\n  - {name: a, url: rtsp://h/x, threshold: .nan}\n",
     "cameras.0: event threshold must be a finite number, got nan"),
    ("cameras:\n  - {name: a, url: rtsp://h/x, threshold: 3, low_threshold: 4}\n",
     "cameras.0: event low threshold 4.0 is above the threshold 3.0"),
    ("cameras:\n  - {name: a, url: rtsp://h/x, low_threshold: 2}\n",
     "cameras.0: low_threshold without threshold (the camera's own threshold)"),
    ("- a\n", "should be a mapping of keys, got list ['a']"),
    ("cameras:\n  - {name: a, url: rtsp://h/x, password_env: ANOMSTREAM_TEST_UNSET}\n",
     "cameras.0.password_env: ANOMSTREAM_TEST_UNSET is not set"),
    ("cameras:\n  - {name: a, url: rtsp://h/x, policy: newest}\n", "cameras.0.policy: Input should be 'every' or 'latest'"),
    ("cameras:\n  - {name: a, url: rtsp://h/x, keep_maps: -1}\n",
     "cameras.0.keep_maps: Input should be greater than or equal to 0"),
    ("cameras:\n  - {name: a, url: rtsp://h/x}\n  - {name: a, url: rtsp://h/x, name: b}\n",
     "cameras[1].name: key given twice (lines 3 and 3); give it once (YAML would keep only the last)"),
    ("cameras:\n  - name: a\n   url: rtsp://h/x\n",
     "line 3 invalid YAML (expected <block end>, but found '<block mapping start>')"),
])
def test_each_mistake_is_one_line_naming_the_file_and_key(tmp_path, monkeypatch, text, error):
    monkeypatch.delenv("ANOMSTREAM_TEST_UNSET", raising=False)
    path = _file(tmp_path, text)
    with pytest.raises(AnomstreamError) as refused:
        read_cameras(path)
    assert str(refused.value) == f"--cameras {path}: {error}"
    assert "hunter2" not in str(refused.value)


def test_password_files_others_can_read_and_other_checkpoints_are_refused(tmp_path):
    secret = tmp_path / "pass"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    path = _file(tmp_path, f"cameras:\n  - {{name: a, url: rtsp://h/x, password_file: {secret}}}\n")
    with pytest.raises(AnomstreamError, match=rf"^--cameras {path}: cameras.0.password_file: {secret}: readable by "
                                              r"other users \(chmod 600 it\)$"):
        read_cameras(path)
    other = tmp_path / "other.pt"
    path = _file(tmp_path, f"cameras:\n  - {{name: a, url: rtsp://h/x, checkpoint: {other}}}\n")
    with pytest.raises(AnomstreamError, match=r"cameras.0.checkpoint: .*other.pt is not the run's --checkpoint .*run.pt: "
                                              r"one model per run \(run one anomstream live per model\)$"):
        read_cameras(path, tmp_path / "run.pt")
    assert read_cameras(path, other)[0].name == "a"


def test_a_camera_named_like_another_input_is_refused_and_urls_keep_their_user(tmp_path, monkeypatch):
    monkeypatch.setenv("GATE_PASSWORD", "gate-secret")
    path = _file(tmp_path, """cameras:
  - {name: camera_0, url: 'rtsp://viewer@10.0.0.5/live', password_env: GATE_PASSWORD}
  - {name: dock, url: rtsp://10.0.0.6/live, password_env: ANOMSTREAM_TEST_UNSET, enabled: false}
""")
    monkeypatch.delenv("ANOMSTREAM_TEST_UNSET", raising=False)
    cameras = read_cameras(path)  # a disabled camera's password is not asked for
    gate = CameraSource(cameras[0].url, stream_id="camera_0")
    apply_cameras([gate], cameras)
    assert (gate.credentials.user, gate.credentials.password) == ("viewer", "gate-secret")
    device = CameraSource("camera:0", stream_id="camera_0", device=0)
    with pytest.raises(AnomstreamError, match="^--cameras: camera 'camera_0' has the name of another input's stream; "
                                              "rename the camera$"):
        apply_cameras([device, CameraSource(cameras[0].url, stream_id="camera_0")], cameras)
    assert device.settings == StreamSettings() and device.credentials is None
