"""Webhook delivery as an HTTP client should do it, against real loopback receivers: 307 / 308
followed with the POST and its body, 301 / 302, a scheme change and too many hops refused and
reported, Basic auth from the URL's credentials, which appear in no file and no output; and the
handed field case (18-webhook-redirect) through the CLI."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anomstream.pipeline.errors import AnomstreamError
from anomstream.pipeline.events.outbox import Outbox
from anomstream.pipeline.events.webhook import MAX_REDIRECTS, parse_webhook
from tests.servers import HookReceiver

MESSAGE = {"type": "start", "event_id": "e1", "peak_score": 4.5}


def _deliver(folder: Path, url: str, count: int = 1, wait_s: float = 10.0) -> Outbox:
    """An outbox on ``folder`` sending ``count`` messages to ``url``, closed after ``wait_s`` s at most."""
    outbox = Outbox(folder, url, backoff_s=0.05, max_backoff_s=0.1)
    for index in range(count):
        outbox.put(f"e{index}-start", MESSAGE)
    outbox.close(wait_s=wait_s)
    return outbox


def _files_text(folder: Path) -> str:
    return "\n".join(path.read_bytes().decode("utf-8", "replace") for path in folder.rglob("*") if path.is_file())


@pytest.mark.parametrize("status", [307, 308])
def test_307_and_308_are_followed_keeping_post_and_body(tmp_path, status):
    receiver = HookReceiver(answers={"/hook": (status, "/hook/")})
    try:
        outbox = _deliver(tmp_path / "outbox", receiver.url + "/hook")
    finally:
        receiver.stop()
    sent = json.dumps({"message_id": "e0-start", **MESSAGE}).encode()
    assert [(r["method"], r["path"], r["status"], r["body"]) for r in receiver.requests] == [
        ("POST", "/hook", status, sent), ("POST", "/hook/", 200, sent)]
    followed = receiver.requests[1]["headers"]
    assert (followed["Content-Type"], followed["Idempotency-Key"]) == ("application/json", "e0-start")
    assert (outbox.delivered, outbox.waiting(), outbox.problems()) == (1, [], [])


@pytest.mark.parametrize("status", [301, 302])
def test_301_and_302_are_reported_with_status_and_location_and_kept(tmp_path, status):
    receiver = HookReceiver(answers={"/old": (status, "/hook/")})
    try:
        outbox = _deliver(tmp_path / "outbox", receiver.url + "/old", count=2, wait_s=0.5)
    finally:
        receiver.stop()
    assert {(r["method"], r["path"]) for r in receiver.requests} == {("POST", "/old")}
    assert len(outbox.waiting()) == 2 and outbox.delivered == 0
    assert outbox.problems() == [
        f"webhook {receiver.url}/old: HTTP {status} redirect to {receiver.url}/hook/ not followed (clients turn a POST "
        f"redirected by {status} into a GET without its body: give --webhook the new URL); 2 message(s) kept in "
        f"{tmp_path / 'outbox' / 'pending'} for the next run with a webhook"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (certificate, key) PEM files."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found: no certificate for the https receiver")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-days", "1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem")], check=True, capture_output=True)
    return folder / "cert.pem", folder / "key.pem"


def test_https_to_http_is_refused_and_http_to_https_followed(tmp_path, certificate, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # the client trusts the receiver's certificate
    plain = HookReceiver()
    secure = HookReceiver(answers={"/down": (307, plain.url + "/hook/")}, certificate=certificate)
    try:
        refused = _deliver(tmp_path / "refused", secure.url + "/down", wait_s=0.5)
        up = HookReceiver(answers={"/up": (308, secure.url + "/hook/")})
        try:
            followed = _deliver(tmp_path / "followed", up.url + "/up")
        finally:
            up.stop()
    finally:
        plain.stop()
        secure.stop()
    assert plain.requests == [] and len(refused.waiting()) == 1
    assert refused.problems() == [
        f"webhook {secure.url}/down: HTTP 307 redirect to {plain.url}/hook/ refused (from https to http: only the same "
        f"scheme or http to https is followed); 1 message(s) kept in {tmp_path / 'refused' / 'pending'} for the next "
        f"run with a webhook"]
    assert followed.delivered == 1 and [(r["path"], r["status"]) for r in secure.requests][-1] == ("/hook/", 200)


def test_too_many_redirects_are_refused_and_reported(tmp_path):
    receiver = HookReceiver(answers={"/a": (307, "/b"), "/b": (308, "/a")})
    try:
        outbox = _deliver(tmp_path / "outbox", receiver.url + "/a", wait_s=0.3)
    finally:
        receiver.stop()
    first = [r["path"] for r in receiver.requests][:MAX_REDIRECTS + 1]
    assert first == ["/a", "/b", "/a", "/b", "/a", "/b"] and outbox.delivered == 0
    assert outbox.problems() == [
        f"webhook {receiver.url}/a (redirected to {receiver.url}/b): HTTP 308 redirect to {receiver.url}/a refused "
        f"(more than {MAX_REDIRECTS} redirects); 1 message(s) kept in {tmp_path / 'outbox' / 'pending'} for the next "
        f"run with a webhook"]


def test_a_refusal_and_a_closed_port_are_summarised(tmp_path):
    receiver = HookReceiver(answers={"/bad": (400, None)})
    try:
        refused = _deliver(tmp_path / "refused", receiver.url + "/bad", count=2)
    finally:
        receiver.stop()
    assert refused.problems() == [f"webhook {receiver.url}/bad: HTTP 400 Bad Request; 2 message(s) refused for good, "
                                  f"moved to {tmp_path / 'refused' / 'rejected'}"]
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    down = _deliver(tmp_path / "down", closed, wait_s=0.3)
    assert down.problems() == [f"webhook {closed}: [Errno 111] Connection refused; 1 message(s) kept in "
                               f"{tmp_path / 'down' / 'pending'} for the next run with a webhook"]


def test_url_credentials_go_as_basic_auth_and_are_never_shown(tmp_path, capsys):
    other = HookReceiver()
    receiver = HookReceiver(answers={"/secure": (307, "/secure/"), "/away": (307, other.url + "/hook/")},
                            basic={"/secure/": "user:t0ken"})
    host = receiver.url.removeprefix("http://")
    try:
        good = _deliver(tmp_path / "good" / "outbox", f"http://user:t0ken@{host}/secure")
        wrong = _deliver(tmp_path / "wrong" / "outbox", f"http://user:s3cret@{host}/secure/", wait_s=0.5)
        away = _deliver(tmp_path / "away" / "outbox", f"http://user:t0ken@{host}/away")
    finally:
        receiver.stop()
        other.stop()
    basic = "Basic " + base64.b64encode(b"user:t0ken").decode()
    sent = [(r["path"], r["status"], r["headers"].get("Authorization")) for r in receiver.requests]
    assert sent[:2] == [("/secure", 307, basic), ("/secure/", 200, basic)]  # same host: kept on the redirect
    assert good.delivered == 1 and away.delivered == 1
    assert [r["headers"].get("Authorization") for r in other.requests] == [None]  # another host: not sent on
    assert len(wrong.waiting()) == 1 and wrong.rejected == 0  # 401: the credentials are wrong, not the message
    assert wrong.problems() == [
        f"webhook http://***@{host}/secure/: HTTP 401 Unauthorized; 1 message(s) kept in "
        f"{tmp_path / 'wrong' / 'outbox' / 'pending'} for the next run with a webhook"]
    # what a log of them would show:
    print(good.sender.webhook, wrong.sender.webhook, good.sender.shown, wrong.problems(), wrong.last_error)
    shown = capsys.readouterr().out + _files_text(tmp_path)
    assert "***@" in shown and "t0ken" not in shown and "s3cret" not in shown


def test_webhook_option_values_and_their_errors(tmp_path):
    webhook = parse_webhook("https://us%40er:p%3Ass@hooks.example/in?x=1")
    assert (webhook.url, webhook.shown) == ("https://hooks.example/in?x=1", "https://***@hooks.example/in?x=1")
    assert webhook.authorization == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    (tmp_path / "hook.url").write_text("http://user:t0ken@127.0.0.1:9/hook\n")
    assert parse_webhook(f"@{tmp_path / 'hook.url'}") == parse_webhook("http://user:t0ken@127.0.0.1:9/hook")
    for given, message in [
        ("ftp://user:t0ken@host/x", "--webhook 'ftp://***@host/x': not an http:// or https:// URL"),
        ("http://user:t0ken@host:port/x", "--webhook 'http://***@host:port/x': not a URL (its port is not a number, or "
                                          "a [ is not closed)"),
        (f"@{tmp_path / 'none.url'}", f"--webhook @{tmp_path / 'none.url'}: cannot read the file (No such file or "
                                      f"directory)"),
    ]:
        with pytest.raises(AnomstreamError) as raised:
            parse_webhook(given)
        assert str(raised.value) == message


@pytest.fixture(scope="module")
def hook_case(shared_data):
    """../shared/cases/field2/18-webhook-redirect: hook.py (a loopback receiver) and clip.mp4."""
    folder = shared_data.parent / "cases" / "field2" / "18-webhook-redirect"
    if not (folder / "hook.py").is_file():
        pytest.skip(f"field case not found at {folder}")
    return folder


def _start_hook(folder: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """The case's hook.py on a free port of 127.0.0.1, answering."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, str(folder / "hook.py"), "--port", str(port), "--log", str(log)])
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                os.kill(process.pid, signal.SIGKILL)
                raise RuntimeError(f"hook.py did not answer on 127.0.0.1:{port}") from None
            time.sleep(0.1)


@pytest.mark.parametrize("path", ["/secure/", "/old"])
def test_case_18_webhook_redirect_through_the_cli(ray_session, hook_case, tmp_path, capsys, path):
    from anomstream.pipeline.cli import main

    process, port = _start_hook(hook_case, tmp_path / "log.jsonl")
    host = f"127.0.0.1:{port}"
    url = f"http://user:t0ken@{host}{path}" if path == "/secure/" else f"http://{host}{path}"
    try:
        code = main(["score", str(hook_case / "clip.mp4"), "--out", str(tmp_path / "X.zarr"), "--replicas", "1",
                     "--event-threshold", "0.01", "--webhook", url, "--quiet"])
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait()
    out, err = capsys.readouterr()
    events = tmp_path / "X.events"
    sent = [json.loads(line) for line in (events / "events.jsonl").read_text().splitlines()]
    ids = [f"{message['event_id']}-{message['type']}" for message in sent]
    answers = [(line["path"], line["status"], line["message_id"]) for line in
               map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())]
    assert code == 0 and len(ids) == 2
    if path == "/old":
        assert {answer[:2] for answer in answers} == {("/old", 301)} and len(list((events / "outbox" / "pending").iterdir())) == 2
        assert f"events: 1 ({events}); 2 message(s) not delivered yet, kept in the outbox\n" in out
        assert err == (f"warning: webhook http://{host}/old: HTTP 301 redirect to http://{host}/hook/ not followed (clients "
                       f"turn a POST redirected by 301 into a GET without its body: give --webhook the new URL); 2 message(s) "
                       f"kept in {events / 'outbox' / 'pending'} for the next run with a webhook\n")
    else:
        assert answers == [(path, 200, message_id) for message_id in ids]  # Basic auth from the URL accepted
        assert err == "" and f"events: 1 ({events})\n" in out and not list((events / "outbox" / "pending").iterdir())
    assert "t0ken" not in out + err + _files_text(tmp_path)
