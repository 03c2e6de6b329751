"""/metrics, /healthz and the view's token (issue 32, items 5 and 6), without Ray: the server
(uvicorn on loopback) over accounting made by the store's own StreamAccounting; the text read back
with prometheus_client's parser. A live run's /metrics against a hung RTSP camera is in test_rtsp."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port

from anomstream.pipeline.errors import AnomstreamError
from anomstream.pipeline.sources.base import LiveStatus
from anomstream.pipeline.store import FrameStatus
from anomstream.pipeline.store.accounting import StreamAccounting
from anomstream.pipeline.view.access import TOKEN_VARIABLE, view_token
from anomstream.pipeline.view.metrics import metrics_text
from anomstream.pipeline.view.server import LiveView, reserve_port

TOKEN = "a-token-of-24-characters"


def _accounting() -> dict[str, dict]:
    now = time.time()
    camera = StreamAccounting(live=True)
    status = np.array([FrameStatus.WARMUP] * 4 + [FrameStatus.SCORED] * 10 + [FrameStatus.DROPPED_BEHIND] * 3, np.uint8)
    camera.rows_written(status, np.full(len(status), now - 0.2), now)
    camera.rows_written(np.array([FrameStatus.SCORED] * 2, np.uint8), np.array([now - 0.07, now - 3.0]), now)
    camera.add_gaps([{"start": now - 9, "end": now - 8, "kind": "stall"}])
    camera.camera = LiveStatus("stalled", now - 3, last_frame=now - 5, reason="no frame for 5.0 s")
    recording = StreamAccounting(live=False)
    recording.count(np.array([FrameStatus.SCORED] * 7, np.uint8))
    return {"cam1": camera.attrs(), "clip": recording.attrs()}


def _samples(text: bytes) -> dict[tuple, float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text.decode()) for sample in family.samples}


def test_metrics_say_what_the_accounting_says():
    samples = _samples(metrics_text(_accounting(), {"events": 4, "replica_busy": {"node-a": 0.75},
                                                    "outbox": {"webhook": 0, "mqtt": 3}}))
    assert samples[("anomstream_frames_total", (("status", "scored"), ("stream", "cam1")))] == 12
    assert samples[("anomstream_frames_total", (("status", "dropped_behind"), ("stream", "cam1")))] == 3
    assert samples[("anomstream_frames_total", (("status", "scored"), ("stream", "clip")))] == 7
    assert samples[("anomstream_gaps_total", (("kind", "stall"), ("stream", "cam1")))] == 1
    states = {labels[0][1]: value for (name, labels), value in samples.items() if name == "anomstream_camera_state"}
    assert states == {"connecting": 0, "live": 0, "stalled": 1, "down": 0, "auth_failed": 0, "stopped": 0}
    assert samples[("anomstream_camera_last_frame_age_seconds", (("stream", "cam1"),))] == pytest.approx(5, abs=0.5)
    assert samples[("anomstream_latency_seconds", (("quantile", "0.5"), ("stream", "cam1")))] == pytest.approx(0.2, abs=0.05)
    assert not [key for key in samples if key[0].startswith("anomstream_camera") and ("stream", "clip") in key[1]]
    assert samples[("anomstream_events_total", ())] == 4
    buckets = {dict(labels)["le"]: value for (name, labels), value in samples.items()
               if name == "anomstream_frame_latency_seconds_bucket" and ("stream", "cam1") in labels}
    assert buckets == {"0.05": 0, "0.1": 1, "0.25": 11, "0.5": 11, "1": 11, "2.5": 11, "5": 12, "10": 12, "+Inf": 12}
    assert samples[("anomstream_frame_latency_seconds_count", (("stream", "cam1"),))] == 12
    assert samples[("anomstream_frame_latency_seconds_sum", (("stream", "cam1"),))] == pytest.approx(10 * 0.2 + 3.07, abs=0.01)
    assert not [key for key in samples if key[0].startswith("anomstream_frame_latency") and ("stream", "clip") in key[1]]
    assert samples[("anomstream_replica_busy_ratio", (("node", "node-a"),))] == 0.75
    assert samples[("anomstream_outbox_messages", (("sink", "mqtt"),))] == 3



def test_an_event_open_is_a_gauge_until_it_ends():
    """An event that lasts (a scene the model does not fit: open for the whole run) counted in no
    metric: anomstream_events_total counts ended events (a new user's trial)."""
    from anomstream.pipeline.driver.report import RunReport
    from anomstream.pipeline.driver.reporter import BusyReporter, EventRelay

    class Writers:
        news: list = []

        def take_events(self, lost_ok: bool = False) -> list:
            news, Writers.news = Writers.news, []
            return news

    report = RunReport("out.zarr")
    relay = EventRelay(Writers(), report, BusyReporter(), live=True, enabled=True)

    def scrape(*messages: dict) -> dict:
        Writers.news = list(messages)
        relay.relay(final=True)
        run = {"events": report.events,
               "events_open": {stream_id: len(ids) for stream_id, ids in report.open_events.items()}}
        samples = _samples(metrics_text(_accounting(), run))
        return {key[1][0][1]: value for key, value in samples.items() if key[0] == "anomstream_event_open"}

    assert scrape() == {"cam1": 0, "clip": 0}
    assert scrape({"type": "start", "stream_id": "cam1", "event_id": "e1"}) == {"cam1": 1, "clip": 0}
    assert scrape({"type": "start", "stream_id": "cam1", "event_id": "e2"},
                  {"type": "end", "stream_id": "cam1", "event_id": "e1"}) == {"cam1": 1, "clip": 0}
    assert scrape({"type": "end", "stream_id": "cam1", "event_id": "e2"}) == {"cam1": 0, "clip": 0}
    assert report.events == 2


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_a_token_guards_every_endpoint_and_metrics_serve_alone():
    accounting = _accounting()
    port = free_port()
    server = LiveView(lambda: accounting, "127.0.0.1", port, token=TOKEN, page=False, run_figures=lambda: {"events": 1})
    base = f"http://127.0.0.1:{port}"
    try:
        for path in ("/metrics", "/healthz"):
            status, body, _ = _get(base + path)
            assert status == 401 and TOKEN.encode() not in body
            assert _get(base + path, {"Authorization": "Bearer wrong-token-of-some-length"})[0] == 401
        status, body, headers = _get(base + "/metrics", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and headers["content-type"].startswith("text/plain")
        assert _samples(body)[("anomstream_events_total", ())] == 1
        status, body, _ = _get(base + "/healthz", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and json.loads(body) == {"status": "ok", "streams": 2, "cameras": {"cam1": "stalled"},
                                                      "cameras_not_live": 1}
        status, _, headers = _get(f"{base}/healthz?token={TOKEN}")  # a script: answered, no cookie
        assert status == 200 and "set-cookie" not in headers
        assert _get(f"{base}/?token=wrong-token-of-some-length")[0] == 401
        status, _, headers = _get(f"{base}/?token={TOKEN}")  # a browser opening the page: the token becomes a cookie
        assert status == 303 and headers["location"] == "./"
        cookie = headers["set-cookie"].split(";")[0]
        assert "httponly" in headers["set-cookie"].lower() and "samesite=strict" in headers["set-cookie"].lower()
        assert _get(base + "/healthz", {"Cookie": cookie})[0] == 200
        assert _get(base + "/", {"Authorization": f"Bearer {TOKEN}"})[0] == 404  # no page without --view
    finally:
        server.close()


def test_a_view_beyond_loopback_needs_a_token(monkeypatch, tmp_path):
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    assert view_token("127.0.0.1", None) is None
    with pytest.raises(AnomstreamError) as refused:
        view_token("0.0.0.0", None)
    assert str(refused.value).startswith("--view-host 0.0.0.0: the view shows camera pictures beyond this machine; set a "
                                         f"token in {TOKEN_VARIABLE} or --view-token-file FILE")
    monkeypatch.setenv(TOKEN_VARIABLE, "short")
    with pytest.raises(AnomstreamError, match=f"^{TOKEN_VARIABLE}: the view token is 5 characters; use at least 16$"):
        view_token("0.0.0.0", None)
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    assert view_token("0.0.0.0", None) == TOKEN == view_token("127.0.0.1", None)  # asked on loopback too, once set
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}-from-file\n")
    assert view_token("0.0.0.0", token_file) == f"{TOKEN}-from-file"
    with pytest.raises(AnomstreamError, match=r"^--view-token-file .*missing: cannot be read \(No such file or directory\)$"):
        view_token("0.0.0.0", tmp_path / "missing")


def test_a_reserved_port_is_held_until_the_view_serves_on_it_and_freed_with_it():
    """A run binds --view/--metrics before Ray starts processes that take ports of their own (one
    took the view's port between the check and the serving once: the run ended)."""
    port = free_port()
    listener = reserve_port("127.0.0.1", port, "--metrics")
    with pytest.raises(AnomstreamError, match=rf"^--metrics: cannot serve on 127\.0\.0\.1:{port} \(Address already in use"):
        reserve_port("127.0.0.1", port, "--metrics")
    server = LiveView(_accounting, "127.0.0.1", port, page=False, listener=listener)
    try:
        status, body, _ = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and json.loads(body)["streams"] == 2
    finally:
        server.close()
    reserve_port("127.0.0.1", port).close()  # free again


def test_the_live_table_shows_whole_stream_names():
    """Names longer than the column were cut (``rtsp_127.0.0.1_18554_nop`` for two cameras told apart
    only by their path: a new user's trial)."""
    from anomstream.pipeline.driver.report import live_table

    attrs = _accounting()["cam1"]
    names = ["rtsp_127.0.0.1_18554_nopath", "rtsp_127.0.0.1_18554_nopass", "cam1"]
    lines = live_table({name: attrs for name in names}).splitlines()
    assert [line.split()[0] for line in lines] == ["stream", *names]
    assert len({line.index(" stalled") for line in lines[1:]}) == 1  # the columns stay aligned
