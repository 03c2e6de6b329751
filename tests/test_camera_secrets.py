"""A camera's password and token stay secret. Against a loopback MJPEG camera that wants HTTP Basic
auth (its password handed over in its environment): credentials from a netrc file or the
environment open it without a password in the URL; a refused password, a netrc file that cannot be
used and an unreachable camera fail in one line with the password masked; after a real ``live``
run through the CLI with a URL that carries a password and a token, neither is in any file of the
store, the events folder or Ray's session folder (the workers' logs), in any process's command
line, the webhook's messages, the live view's JSON, or what was printed."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from servers import LockedCamera, WebhookReceiver

from anomstream.pipeline.cli import main
from anomstream.pipeline.errors import SourceError
from anomstream.pipeline.events.recorder import events_folder
from anomstream.pipeline.sources.base import Frame
from anomstream.pipeline.sources.camera import (
    PASSWORD_VARIABLE,
    USER_VARIABLE,
    CameraSource,
    Credentials,
    Reconnect,
    url_with_credentials,
)
from anomstream.pipeline.sources.resolve import resolve_inputs
from anomstream.pipeline.store import open_results

USER, PASSWORD = "cam-op", "S3cr:t/p@ss%9"  # characters a URL must percent-encode
TOKEN, WRONG = "t0ken-5ecret", "wr0ng-Pa55"
ASKS = ("camera asks for a user and password (401 Unauthorized); none found in the URL, the netrc file "
        "($NETRC or ~/.netrc) or ANOMSTREAM_CAMERA_USER/ANOMSTREAM_CAMERA_PASSWORD")


@pytest.fixture
def locked(shared_data):
    camera = LockedCamera(shared_data / "vtest.avi", 10, f"{USER}:{PASSWORD}")
    yield camera
    camera.stop()


@pytest.fixture
def home(monkeypatch, tmp_path) -> Path:
    """An empty home folder, no NETRC and no camera variables: no credentials anywhere."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    for name in ("NETRC", USER_VARIABLE, PASSWORD_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    return folder


def _netrc(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _read(url: str, count: int = 3) -> tuple[CameraSource, list[Frame]]:
    source = CameraSource(url, max_frames=count)
    return source, [item for item in source.frames() if isinstance(item, Frame)]


def test_netrc_or_environment_credentials_open_a_locked_camera(locked, home, monkeypatch, tmp_path):
    with pytest.raises(SourceError) as refused:
        _read(locked.url)
    assert str(refused.value) == f"{locked.url}: {ASKS}"

    in_home = _netrc(home / ".netrc", f"machine other.host login x password y\nmachine 127.0.0.1 login {USER} "
                                      f"password {PASSWORD}\n")
    source, frames = _read(locked.url)
    assert len(frames) == 3 and source.credentials == Credentials(USER, PASSWORD, str(in_home))

    named = _netrc(tmp_path / "cams.netrc", f"default login {USER} password {PASSWORD}\n")
    _netrc(in_home, f"machine 127.0.0.1 login {USER} password {WRONG}\n")
    monkeypatch.setenv("NETRC", str(named))  # $NETRC, not ~/.netrc
    source, frames = _read(locked.url)
    assert len(frames) == 3 and source.credentials.origin == str(named)

    monkeypatch.delenv("NETRC")
    in_home.unlink()
    monkeypatch.setenv(USER_VARIABLE, "someone-else")
    monkeypatch.setenv(PASSWORD_VARIABLE, PASSWORD)
    source, frames = _read(f"http://{USER}@127.0.0.1:{locked.port}/")  # the URL's user wins
    assert len(frames) == 3 and source.credentials == Credentials(USER, PASSWORD, PASSWORD_VARIABLE)
    for shown in (source.describe(), repr(source), source.stream_id, repr(source.credentials)):
        assert PASSWORD not in shown and quote(PASSWORD, safe="") not in shown

    monkeypatch.delenv(PASSWORD_VARIABLE)
    in_url = f"http://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{locked.port}/live?token={TOKEN}"
    source, frames = _read(in_url)  # the URL's own password, percent-encoded
    assert len(frames) == 3 and source.credentials == Credentials(USER, PASSWORD, "the URL")
    assert repr(source) == (f"CameraSource('http://{USER}:***@127.0.0.1:{locked.port}/live?***', "
                            f"stream_id='http_127.0.0.1_{locked.port}_live')")


def test_netrc_that_cannot_be_used_fails_in_one_line_without_its_secrets(home, monkeypatch, tmp_path):
    camera = "rtsp://cam.local/stream"

    def reason() -> str:
        inputs = resolve_inputs([camera])
        assert not inputs.sources
        return inputs.failed[0].reason

    monkeypatch.setenv("NETRC", str(tmp_path / "none.netrc"))
    assert reason() == f"{camera}: NETRC names {tmp_path / 'none.netrc'}: no such file"
    shared = _netrc(tmp_path / "shared.netrc", f"machine cam.local login admin password {PASSWORD}\n", 0o644)
    monkeypatch.setenv("NETRC", str(shared))
    assert reason() == f"{camera}: {shared}: readable by other users, so its passwords are not used (chmod 600 it)"
    broken = _netrc(tmp_path / "broken.netrc", f"machine a login b password c\nmachine cam.local login admin {PASSWORD}\n")
    monkeypatch.setenv("NETRC", str(broken))  # Python's own message would quote the password as a "bad token"
    assert reason() == f"{camera}: {broken}: not a valid netrc file (machine HOST login USER password PASSWORD)"
    _netrc(shared, "machine other.host login admin password x\n", 0o644)  # no entry for the camera: not read
    monkeypatch.setenv("NETRC", str(shared))
    (source,) = resolve_inputs([camera]).sources
    assert source.credentials is None and source.describe() == camera


def test_refused_and_unreachable_cameras_fail_in_one_masked_line(locked, home, monkeypatch):
    port = locked.port
    patient = Reconnect(connect_timeout_s=30)  # a refusal is not retried: waiting does not make a password right
    started = time.monotonic()
    with pytest.raises(SourceError) as refused:
        list(CameraSource(f"http://{USER}:{WRONG}@127.0.0.1:{port}/live?token={TOKEN}", reconnect=patient).frames())
    assert str(refused.value) == (f"http://{USER}:***@127.0.0.1:{port}/live?***: camera refused user '{USER}' with "
                                  f"the password from the URL (401 Unauthorized)")
    monkeypatch.setenv(PASSWORD_VARIABLE, WRONG)
    with pytest.raises(SourceError) as refused:
        list(CameraSource(locked.url, reconnect=patient).frames())
    assert str(refused.value) == (f"{locked.url}: camera refused an empty user with the password from "
                                  f"ANOMSTREAM_CAMERA_PASSWORD (401 Unauthorized)")
    assert time.monotonic() - started < 10

    with pytest.raises(SourceError) as unreachable:
        list(CameraSource(f"rtsp://{USER}:{WRONG}@127.0.0.1:9/live;session={TOKEN}?token={TOKEN}").frames())
    assert str(unreachable.value) == (f"rtsp://{USER}:***@127.0.0.1:9/live;***?***: camera is unreachable or cannot be "
                                      f"opened (Connection refused)")


def test_a_library_error_quoting_the_url_is_masked(home, monkeypatch):
    url = f"http://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:9/live?token={TOKEN}"
    source = CameraSource(url)

    class Capture:  # as OpenCV or FFmpeg would: an error that repeats the URL it was given
        def read(self):
            raise RuntimeError(f"cannot read {url_with_credentials(source.address, source.credentials)} ({PASSWORD}, "
                               f"token={TOKEN})")

        def release(self) -> None:
            pass

    monkeypatch.setattr(source, "_open", lambda first: Capture())
    with pytest.raises(SourceError) as failed:
        list(source.frames())
    masked = f"http://{USER}:***@127.0.0.1:9/live?***"
    assert str(failed.value) == f"{masked}: decoding failed (cannot read {masked} (***, ***))"


class _Watch:
    """While a run goes on (a thread): the live view's /api/streams answers, and every process's
    command line that holds one of ``secrets``."""

    def __init__(self, view_port: int, secrets: list[str]) -> None:
        self.port, self.secrets = view_port, [secret.encode() for secret in secrets]
        self.views: list[bytes] = []
        self.command_lines: list[bytes] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(0.3):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/streams", timeout=2) as answer:
                    self.views.append(answer.read())
            except OSError:
                pass  # not serving yet, or no more
            for path in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    line = path.read_bytes()
                except OSError:
                    continue  # a process that ended meanwhile
                if any(secret in line for secret in self.secrets):
                    self.command_lines.append(line)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


def _files_holding(folder: Path, secrets: list[str]) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        try:
            data = path.read_bytes() if path.is_file() else b""
        except OSError:
            continue
        found += [f"{path}: {secret}" for secret in secrets if secret.encode() in data]
    return found


def test_live_run_leaves_the_password_and_token_nowhere(ray_session, locked, home, shipped_checkpoint, tmp_path, capfd):
    port = locked.port
    _netrc(home / ".netrc", f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    right = f"http://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/a?token={TOKEN}"  # the password in the URL
    wrong = f"http://{USER}:{WRONG}@127.0.0.1:{port}/b"
    from_netrc = f"http://127.0.0.1:{port}/c"  # as `anomstream live rtsp://cam.local/stream` is meant to be run
    secrets = [PASSWORD, quote(PASSWORD, safe=""), TOKEN, WRONG, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        view_port = probe.getsockname()[1]
    receiver, out = WebhookReceiver(), tmp_path / "cams.zarr"
    watch = _Watch(view_port, secrets)
    try:
        code = main(["live", right, wrong, from_netrc, "--out", str(out), "--max-frames", "10", "--policy", "every",
                     "--replicas", "1", "--auth-retries", "0", "--checkpoint", str(shipped_checkpoint),
                     "--event-threshold", "-1000",
                     "--event-low", "-2000", "--event-min-frames", "1", "--webhook", receiver.url,
                     "--view", str(view_port), "--quiet"])
    finally:
        watch.stop()
        receiver.stop()
    printed = capfd.readouterr()
    assert code == 2
    key = f"http_127.0.0.1_{port}"
    assert printed.err.splitlines() == [
        f"live view: http://127.0.0.1:{view_port}/",
        f"error: {key}_b: http://{USER}:***@127.0.0.1:{port}/b: camera refused user '{USER}' with the password from "
        f"the URL (401 Unauthorized) (frames before it are kept: 0)"]
    root = open_results(out)
    assert root[f"{key}_a"].attrs["source"] == f"http://{USER}:***@127.0.0.1:{port}/a?***"
    assert root[f"{key}_c"].attrs["source"] == from_netrc
    assert root[f"{key}_a"].attrs["written"] == root[f"{key}_c"].attrs["written"] == 10
    assert receiver.received and watch.views  # the webhook and the view had something to carry
    assert (events_folder(out) / "events.jsonl").stat().st_size > 0
    session = Path(ray_session._private.worker._global_node.get_session_dir_path())
    assert (session / "logs").is_dir() and list((session / "logs").glob("worker-*.err"))
    assert _files_holding(out, secrets) == [] and _files_holding(events_folder(out), secrets) == []
    assert _files_holding(session, secrets) == []
    assert watch.command_lines == []
    carried = printed.out + printed.err + json.dumps(receiver.received) + b"".join(watch.views).decode()
    assert [secret for secret in secrets if secret in carried] == []


def test_a_password_holding_an_unencoded_slash_is_masked_too():
    """urlsplit takes 'u:ab' for the login and '/cd@host' for the path: the whole login is masked."""
    from anomstream.pipeline.events.webhook import shown_url
    from anomstream.pipeline.sources.camera import redact_url

    assert redact_url("rtsp://cam-op:ab/cd@cam.local/live?token=9") == "rtsp://***:***@cam.local/live?***"
    assert shown_url("https://hook:ab/cd@alerts.local/x") == "https://***@alerts.local/x"
    assert shown_url("http://alerts.local/x?a=b") == "http://alerts.local/x?a=b"
