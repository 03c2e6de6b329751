"""MQTT delivery against a real broker (Debian's mosquitto, started here on 127.0.0.1 and stopped by
PID; .ci/run installs it): the topics, retained state, the snapshot JPEG, messages kept while the
broker is away or refuses the credentials, nothing of the password anywhere. The whole live run's
messages over MQTT are checked in tests/test_rtsp.py."""

from __future__ import annotations

import base64
import json
import shutil
import time

import numpy as np
import pytest
from servers import MOSQUITTO, MosquittoBroker, MqttListener

from anomstream.pipeline.errors import AnomstreamError
from anomstream.pipeline.events.detector import EventRule
from anomstream.pipeline.events.mqtt import MqttSender, parse_mqtt, publications, topic_name
from anomstream.pipeline.events.outbox import Outbox
from anomstream.pipeline.events.recorder import EventRecorder, EventSettings
from anomstream.pipeline.sources.base import LiveStatus
from anomstream.pipeline.store import FrameStatus
from anomstream.pipeline.stream.windows import WindowBatch
from anomstream.pipeline.visualize import overlay_jpeg


@pytest.fixture(scope="module")
def mosquitto_ready():
    if shutil.which(MOSQUITTO) is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")


def test_the_broker_option_is_parsed_and_refused_in_one_line(tmp_path):
    broker = parse_mqtt("mqtt://ha:p%40ss@broker.local/site7/cams")
    assert (broker.host, broker.port, broker.tls, broker.prefix, broker.username, broker.password) == (
        "broker.local", 1883, False, "site7/cams", "ha", "p@ss")
    assert broker.shown == "mqtt://***@broker.local:1883/site7/cams" and "p@ss" not in repr(broker)
    assert parse_mqtt("mqtts://10.0.0.2").port == 8883 and parse_mqtt("mqtt://h:1884").prefix == "anomstream"
    url_file = tmp_path / "mqtt-url"
    url_file.write_text("mqtt://u:secret@127.0.0.1:1999/x\n")
    assert parse_mqtt(f"@{url_file}").password == "secret"
    for given, error in [
        ("http://u:secret@h/", "--mqtt 'http://***@h/': not an mqtt:// or mqtts:// URL (mqtt://HOST[:PORT][/PREFIX])"),
        ("mqtt://h:port", "--mqtt 'mqtt://h:port': not a URL (its port is not a number)"),
        ("mqtt://h/a/#", "--mqtt 'mqtt://h/a/#': the topic prefix cannot hold + or # or a query"),
        (f"@{tmp_path / 'none'}", f"--mqtt @{tmp_path / 'none'}: cannot read the file (No such file or directory)"),
    ]:
        with pytest.raises(AnomstreamError) as refused:
            parse_mqtt(given)
        assert str(refused.value) == error
    assert topic_name("rtsp://cam.local:554/live#1") == "rtsp___cam.local_554_live_1"
    assert [topic for topic, _, _ in publications("p", {"type": "end", "stream_id": "cam/1", "snapshot_jpeg": "AAE="})] == [
        "p/cam_1/events", "p/cam_1/snapshot"]


def _event_rows(scores: list[float], start: float) -> dict[str, np.ndarray]:
    n = len(scores)
    return {"frame_index": np.arange(n, dtype=np.int64), "timestamp": start + np.arange(n) * 0.1,
            "score": np.asarray(scores, np.float32), "status": np.full(n, FrameStatus.SCORED, np.uint8),
            "map": np.tile(np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8), (n, 1, 1))}


def test_a_recorder_publishes_state_events_and_snapshots_and_keeps_them_while_the_broker_is_away(
        mosquitto_ready, tmp_path):
    broker = MosquittoBroker(tmp_path, start=False)
    url = f"mqtt://127.0.0.1:{broker.port}/site"
    settings = EventSettings(EventRule(5.0, end_after=2, min_frames=2, merge_gap=0), str(tmp_path / "events"),
                             mqtt=parse_mqtt(url))
    t0 = time.time()
    # a writer that does not deliver (the broker is down: nothing could): its messages wait on disk
    recorder = EventRecorder(settings, "run-key", deliver=False)
    recorder.open_stream("cam 1")
    recorder.camera("cam 1", LiveStatus("connecting", t0))
    recorder.camera("cam 1", LiveStatus("live", t0 + 1, t0 + 1))
    frames = np.zeros((6, 3, 8, 8), np.uint8)
    rows = _event_rows([1, 9, 9, 8, 1, 1], t0 + 2)
    batch = WindowBatch("cam 1", 0, 0, frames, 0, rows["frame_index"], rows["timestamp"], rows["status"], 1)
    recorder.feed("cam 1", rows, batch)
    recorder.camera("cam 1", LiveStatus("stalled", t0 + 3, t0 + 2.5, "no frame for 2 s"))
    recorder.close_stream("cam 1")  # its open event ends with the stream
    assert recorder.close(0) == 5  # connecting, live, start, end, stalled: camera_down goes to the webhook only
    (event,) = [json.loads(line) for line in (tmp_path / "events" / "events.jsonl").read_text().splitlines()
                if line.startswith('{"type": "end"')]

    broker.start()
    listener = MqttListener(broker.port, "site/#")
    try:
        outbox = Outbox(tmp_path / "events" / "outbox_mqtt", MqttSender(settings.mqtt, "test-writer"), backoff_s=0.05)
        listener.wait_for("site/cam_1/snapshot")
        deadline = time.monotonic() + 10
        while outbox.waiting() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outbox.waiting() == [] and outbox.delivered == 5
        states = [json.loads(payload)["state"] for payload in listener.on("site/cam_1/state")]
        assert states == ["connecting", "live", "stalled"]
        kinds = [json.loads(payload)["type"] for payload in listener.on("site/cam_1/events")]
        assert kinds == ["start", "end"]
        end = json.loads(listener.on("site/cam_1/events")[-1])
        assert end["event_id"] == event["event_id"] and end["peak_score"] == 9 and "snapshot_jpeg" not in end
        (picture,) = listener.on("site/cam_1/snapshot")
        assert picture == (tmp_path / "events" / event["snapshot"]).read_bytes() and picture[:2] == b"\xff\xd8"
        assert listener.on("site/available") == [b"online"]
        outbox.close()
        assert listener.wait_for("site/available", 2) == [b"online", b"offline"]
    finally:
        listener.close()
    # retained: a dashboard that subscribes later sees the camera's last state and picture at once
    late = MqttListener(broker.port, "site/#")
    try:
        late.wait_for("site/cam_1/snapshot")
        assert [json.loads(p)["state"] for p in late.wait_for("site/cam_1/state")] == ["stalled"]
        assert late.on("site/available") == [b"offline"] and late.on("site/cam_1/events") == []
        retained = {topic for topic, _, flag in late.messages if flag}
        assert retained == {"site/available", "site/cam_1/state", "site/cam_1/snapshot"}
    finally:
        late.close()
        broker.stop()


def test_refused_credentials_keep_the_messages_and_say_so_without_the_password(mosquitto_ready, tmp_path):
    broker = MosquittoBroker(tmp_path, credentials="anomstream:right-pass")
    try:
        wrong = parse_mqtt(f"mqtt://anomstream:wrong-pass@127.0.0.1:{broker.port}")
        outbox = Outbox(tmp_path / "outbox", MqttSender(wrong, "test-wrong"), backoff_s=0.05)
        outbox.put("m1", {"type": "camera_state", "stream_id": "cam", "state": "live"})
        time.sleep(2)
        assert len(outbox.waiting()) == 1 and outbox.close(0) == 1
        (problem,) = outbox.problems()
        assert problem.startswith(f"MQTT broker mqtt://***@127.0.0.1:{broker.port}/anomstream: Not authorized")
        assert problem.endswith(f"1 message(s) kept in {tmp_path / 'outbox' / 'pending'} for the next run with an MQTT broker")
        assert "wrong-pass" not in problem
        right = parse_mqtt(f"mqtt://anomstream:right-pass@127.0.0.1:{broker.port}")
        again = Outbox(tmp_path / "outbox", MqttSender(right, "test-right"), backoff_s=0.05)
        assert again.close(5) == 0 and again.delivered == 1
    finally:
        broker.stop()


def test_the_jpeg_of_a_snapshot_is_the_overlay_written_beside_the_log():
    image = np.full((3, 16, 16), 128, np.uint8)
    picture = overlay_jpeg(image, np.ones((16, 16), np.float32), 1.0)
    sent = publications("anomstream", {"type": "end", "stream_id": "c", "snapshot_jpeg": base64.b64encode(picture).decode()})
    assert sent[1] == ("anomstream/c/snapshot", picture, True) and sent[0][2] is False


def test_each_camera_change_is_a_message_of_its_own(tmp_path):
    """A camera seen stalled from outside keeps its live state's time; coming back, each change
    still has an id of its own (receivers deduplicate by it), and the same change told again
    (a writer taking over) has the same id."""
    settings = EventSettings(EventRule(5.0), str(tmp_path / "events"), mqtt=parse_mqtt("mqtt://127.0.0.1:9"))
    changes = [LiveStatus("live", 100.0, 100.0), LiveStatus("stalled", 105.0, 100.0), LiveStatus("live", 100.0, 106.0),
               LiveStatus("stalled", 109.0, 106.0), LiveStatus("live", 100.0, 110.0)]
    names = []
    for _ in range(2):  # the second recorder: the same changes told again
        recorder = EventRecorder(settings, "run-key", deliver=False)
        for status in changes:
            recorder.camera("cam", status)
        recorder.close(0)
        pending = (tmp_path / "events" / "outbox_mqtt" / "pending").glob("*.json")
        names.append(sorted(path.name.split("-", 2)[2] for path in pending))
    assert len(names[0]) == 5 and len(set(names[0])) == 5  # five state changes, five ids
    assert set(names[1]) == set(names[0])  # told again: the same ids, delivered once after deduplication


def test_streams_whose_names_give_one_topic_are_refused_and_a_camera_given_up_unseen_is_down(tmp_path):
    from anomstream.pipeline.events.mqtt import check_topics

    broker = parse_mqtt("mqtt://127.0.0.1/site")
    check_topics(["gate", "yard", "gate"], broker)  # one stream named twice is the same topic
    with pytest.raises(AnomstreamError) as refused:
        check_topics(["gate", "my cam", "my_cam"], broker)
    assert str(refused.value) == ("--mqtt: streams 'my cam' and 'my_cam' share the topic site/my_cam; "
                                  "name the cameras apart (--cameras name)")
    recorder = EventRecorder(EventSettings(EventRule(5.0), str(tmp_path / "events")), "run-key", deliver=False)
    t0 = time.time()
    for stream_id in ("never", "ended"):
        recorder.open_stream(stream_id)
        recorder.camera(stream_id, LiveStatus("connecting", t0))
    recorder.camera("never", LiveStatus("stopped", t0 + 1, None, "rtsp://cam/: camera is unreachable or cannot be opened"))
    recorder.camera("ended", LiveStatus("live", t0 + 1, t0 + 1))
    recorder.camera("ended", LiveStatus("stopped", t0 + 2, t0 + 1.5))  # a stream's end: not a camera going down
    recorder.close(0)
    downs = [json.loads(line) for line in (tmp_path / "events" / "events.jsonl").read_text().splitlines()]
    assert [(m["type"], m["stream_id"], m["state"]) for m in downs] == [("camera_down", "never", "stopped")]
    assert downs[0]["reason"] == "rtsp://cam/: camera is unreachable or cannot be opened"


def test_an_event_snapshot_has_the_frame_s_own_shape_and_a_caption(tmp_path):
    """The model's input is square (128 px); the snapshot is drawn back in the source frame's
    shape (768x576 here: 480x360) with a caption strip below (22 px)."""
    import cv2

    recorder = EventRecorder(EventSettings(EventRule(5.0, end_after=2, min_frames=2, merge_gap=0),
                                           str(tmp_path / "events")), "run-key", deliver=False)
    recorder.open_stream("street")
    rows = _event_rows([1, 9, 9, 8, 1, 1], 1_796_000_000.0)
    frames = np.zeros((6, 3, 8, 8), np.uint8)
    batch = WindowBatch("street", 0, 0, frames, 0, rows["frame_index"], rows["timestamp"], rows["status"], 1,
                        source_size=(576, 768))
    recorder.feed("street", rows, batch)
    recorder.close_stream("street")
    recorder.close(0)
    (end,) = [json.loads(line) for line in (tmp_path / "events" / "events.jsonl").read_text().splitlines()
              if line.startswith('{"type": "end"')]
    picture = cv2.imread(str(tmp_path / "events" / end["snapshot"]))
    assert picture.shape == (360 + 22, 480, 3)
    assert picture[-22:].max() == 255 and picture[-22:, :, :].mean() < 60  # white text on a black strip
    from anomstream.pipeline.events.detector import Event
    from anomstream.pipeline.events.recorder import snapshot_caption

    event = Event("street", "id", 1, 3, 1_796_000_000.1, 1_796_000_000.3, 1, 1_796_000_000.1, 9.0, 5.0)
    assert snapshot_caption(event) == "street  frame 1  2026-11-30 00:53:20 UTC  peak 9.00 > 5.00"


def test_a_broker_away_is_told_while_the_run_goes_on_and_again_after_it_came_back(mosquitto_ready, tmp_path):
    """A live run with its MQTT broker away said nothing until it ended (a new user's trial):
    messages waiting 30 s are told once, and once more after the broker came back and went again."""
    from anomstream.pipeline.driver.outboxes import OutboxWatch
    from anomstream.pipeline.events.recorder import outbox_depth

    broker = MosquittoBroker(tmp_path, start=False)
    folder = tmp_path / "events"
    settings = EventSettings(EventRule(5.0, end_after=2, min_frames=2, merge_gap=0), str(folder),
                             mqtt=parse_mqtt(f"mqtt://127.0.0.1:{broker.port}/site"))
    recorder = EventRecorder(settings, "run-key")
    now = [0.0]
    watch = OutboxWatch(folder, clock=lambda: now[0])
    warning = "warning: mqtt: {} message(s) waiting in " + str(folder / "outbox_mqtt") + " for {} s: the receiver " \
              "is away or refuses them (kept, sent when it answers)"
    try:
        recorder.open_stream("cam 1")
        recorder.camera("cam 1", LiveStatus("connecting", time.time()))
        assert watch.check() == []  # waiting from now on
        now[0] = 31.0
        assert watch.check() == [warning.format(outbox_depth(folder)["mqtt"], 31)]
        now[0] = 62.0
        assert watch.check() == []  # told once
        broker.start()
        deadline = time.monotonic() + 30
        while outbox_depth(folder)["mqtt"] and time.monotonic() < deadline:
            time.sleep(0.1)
        now[0] = 70.0
        assert watch.check() == [] and outbox_depth(folder)["mqtt"] == 0  # delivered: nothing to tell
        broker.stop()
        recorder.camera("cam 1", LiveStatus("live", time.time(), time.time()))
        deadline = time.monotonic() + 10
        while not outbox_depth(folder)["mqtt"] and time.monotonic() < deadline:
            time.sleep(0.1)
        now[0] = 75.0
        assert watch.check() == []
        now[0] = 106.0
        assert watch.check() == [warning.format(outbox_depth(folder)["mqtt"], 31)]
    finally:
        recorder.close(0)
        broker.stop()
