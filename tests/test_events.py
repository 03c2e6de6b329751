"""Events from frame scores (hysteresis, minimum length, merging), the webhook outbox (retries,
receiver down, lost answers, a restart), and events through a whole scoring run."""

from __future__ import annotations

import base64
import json
import shutil
import socket

import numpy as np
import pytest

from anomstream.pipeline.cli import main
from anomstream.pipeline.events.detector import EventDetector, EventRule
from anomstream.pipeline.events.outbox import Outbox
from anomstream.pipeline.store import open_results, read_events
from tests.servers import WebhookReceiver


def _run(rule: EventRule, scores: list[float], batches: int = 1):
    """Feed ``scores`` (NaN: unscored) in ``batches`` pieces; returns the messages, the flush
    included, as (kind, start, end, peak frame) with the event's final frames."""
    detector = EventDetector("cam", rule, "run")
    values = np.array(scores, float)
    frames = np.arange(len(values))
    messages = []
    for part in np.array_split(frames, batches):
        messages += detector.feed(part, part * 0.1, values[part])
    messages += detector.flush()
    return [(kind, e.start_frame, e.end_frame, e.peak_frame) for kind, e in messages]


def test_hysteresis_minimum_length_and_merge():
    rule = EventRule(3.0, 2.0, end_after=3, min_frames=2, merge_gap=4)
    low = [1.0] * 12
    scores = [0, 0, 4, 5, 2.5, 1, 1, 1, 1, 4, 4, *low, 4, *low]  # 2-4 and 9-10 merge; the lone 4 at 23 is too short
    assert _run(rule, scores) == [("start", 2, 10, 3), ("end", 2, 10, 3)]
    assert _run(rule, scores, batches=7) == _run(rule, scores)  # however the rows are batched
    # further apart than end_after + merge_gap: two events, messages in the order the frames make them
    scores = [0, 4, 4, *[1.0] * 8, 4, 4, 1, 1]
    assert _run(rule, scores) == [("start", 1, 2, 1), ("end", 1, 2, 1), ("start", 11, 12, 11), ("end", 11, 12, 11)]
    # between the thresholds an event goes on but never starts
    assert _run(rule, [2.5] * 10 + [3.5, 2.5, 2.5, 2.5, 1, 1, 1, 1])[-1] == ("end", 10, 13, 10)
    assert _run(rule, [2.5] * 20) == []
    # two single-frame spikes (each shorter than min_frames) do not merge into one event
    assert _run(rule, [0, 4, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0]) == []
    # the first frame above the threshold can be the peak (its payload is kept for the snapshot)
    detector = EventDetector("cam", rule, "run")
    messages = detector.feed(np.arange(6), np.zeros(6), np.array([9.0, 4, 1, 1, 1, 1]), payload=lambda i: f"row{i}")
    messages += detector.flush()
    assert [kind for kind, _ in messages] == ["start", "end"] and detector.peak_payload(messages[-1][1]) == "row0"


def test_unscored_rows_pass_time_but_neither_start_nor_extend():
    rule = EventRule(3.0, end_after=3, min_frames=1, merge_gap=0)
    nan, inf = float("nan"), float("inf")
    # NaN rows (dropped, gap) after a high frame: the event ends 3 frames later all the same
    ends = [m[1:] for m in _run(rule, [4, nan, nan, nan, nan, 4, 1, 1, 1]) if m[0] == "end"]
    assert ends == [(0, 0, 0), (5, 5, 5)]
    assert _run(rule, [1, inf, 1, 1, 1, 1])[0] == ("start", 1, 1, 1)  # a score off the scale is an event


def test_event_ids_are_stable_and_rules_are_checked():
    rule = EventRule(3.0, min_frames=1)
    first = EventDetector("cam", rule, "run").feed(np.arange(3), np.zeros(3), np.array([4.0, 1, 1]))[0][1]
    again = EventDetector("cam", rule, "run").feed(np.arange(3), np.zeros(3), np.array([4.0, 1, 1]))[0][1]
    other = EventDetector("cam", rule, "another run").feed(np.arange(3), np.zeros(3), np.array([4.0, 1, 1]))[0][1]
    assert first.event_id == again.event_id != other.event_id and len(first.event_id) == 20
    with pytest.raises(ValueError, match="event low threshold 4.0 is above the threshold 3.0"):
        EventRule(3.0, 4.0)
    with pytest.raises(ValueError, match="event min_frames must be >= 1 frame, got 0"):
        EventRule(3.0, min_frames=0)
    with pytest.raises(ValueError, match="event low_threshold must be a finite number, got nan"):
        EventRule(3.0, float("nan"))


def _messages(count: int) -> list[tuple[str, dict]]:
    return [(f"event{i}-end", {"type": "end", "n": i}) for i in range(count)]


def test_outbox_retries_until_the_receiver_accepts(tmp_path):
    receiver = WebhookReceiver(refuse_first=3, drop_answer_first=1)
    try:
        outbox = Outbox(tmp_path / "outbox", receiver.url, backoff_s=0.05, max_backoff_s=0.2)
        for message_id, message in _messages(5):
            outbox.put(message_id, message)
        assert outbox.close(wait_s=30) == 0
    finally:
        receiver.stop()
    kept = receiver.unique()
    assert list(kept) == [message_id for message_id, _ in _messages(5)]  # every one, in order
    assert [body["n"] for body in kept.values()] == list(range(5))
    assert len(receiver.received) == 6  # the one whose answer was lost came twice: dedup by id keeps one
    assert receiver.attempts == 3 + 6 and outbox.failed_attempts == 4 and outbox.delivered == 5


def test_outbox_keeps_messages_while_the_receiver_is_down_and_after_a_restart(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}/events"
    outbox = Outbox(tmp_path / "outbox", down, backoff_s=0.05)
    for message_id, message in _messages(3):
        outbox.put(message_id, message)
    assert outbox.close(wait_s=0.5) == 3 and outbox.delivered == 0 and outbox.failed_attempts >= 1
    assert len(list((tmp_path / "outbox" / "pending").glob("*.json"))) == 3

    receiver = WebhookReceiver(refuse_first=1)  # the process starts again; the receiver is back
    try:
        restarted = Outbox(tmp_path / "outbox", receiver.url, backoff_s=0.05)
        restarted.put("event3-end", {"type": "end", "n": 3})
        assert restarted.close(wait_s=20) == 0
    finally:
        receiver.stop()
    assert list(receiver.unique()) == [f"event{i}-end" for i in range(4)] and len(receiver.received) == 4


def test_outbox_sets_aside_a_message_the_receiver_refuses_for_good(tmp_path):
    receiver = WebhookReceiver(refuse_first=1, refuse_status=400)
    try:
        outbox = Outbox(tmp_path / "outbox", receiver.url, backoff_s=0.05)
        for message_id, message in _messages(3):
            outbox.put(message_id, message)
        assert outbox.close(wait_s=20) == 0
    finally:
        receiver.stop()
    assert list(receiver.unique()) == ["event1-end", "event2-end"] and outbox.rejected == 1
    assert [p.name.endswith("-event0-end.json") for p in (tmp_path / "outbox" / "rejected").iterdir()] == [True]
    assert outbox.last_error == "event0-end: refused by the receiver (HTTP 400)"


@pytest.fixture(scope="module")
def anomalous_clip(ped2, tmp_path_factory):
    """Ped2 test clip 05, first 60 frames: a cyclist from the first frame (frame labels 1)."""
    folder = tmp_path_factory.mktemp("clip05") / "ped2_test05"
    folder.mkdir()
    for path in sorted((ped2 / "testing" / "frames" / "05").iterdir())[:60]:
        shutil.copy(path, folder / path.name)
    return folder


def test_scoring_run_stores_logs_and_delivers_events(ray_session, anomalous_clip, shipped_checkpoint, tmp_path, capsys):
    receiver = WebhookReceiver(refuse_first=2)
    out = tmp_path / "clip05.zarr"
    try:
        code = main(["score", str(anomalous_clip), "--out", str(out), "--webhook", receiver.url, "--quiet"])
    finally:
        receiver.stop()
    printed = capsys.readouterr().out
    assert code == 0
    table = read_events(out, "ped2_test05")
    assert len(table["event_id"]) >= 1 and f"events: {len(table['event_id'])} ({tmp_path / 'clip05.events'})" in printed
    group = open_results(out)["ped2_test05"]
    score = group["score"][:]
    for start, end, peak, peak_score in zip(table["start_frame"], table["end_frame"], table["peak_frame"],
                                            table["peak_score"]):
        assert score[start] > 3.0 and score[peak] == pytest.approx(peak_score) and start <= peak <= end
        assert np.nanmax(score[start:end + 1]) == pytest.approx(peak_score)
    lines = [json.loads(line) for line in (tmp_path / "clip05.events" / "events.jsonl").read_text().splitlines()]
    ends = [line for line in lines if line["type"] == "end"]
    assert [line["event_id"] for line in ends] == list(table["event_id"])
    assert all((tmp_path / "clip05.events" / line["snapshot"]).stat().st_size > 1000 for line in ends)
    delivered = receiver.unique()
    assert sorted(delivered) == sorted(f"{line['event_id']}-{line['type']}" for line in lines)
    assert not list((tmp_path / "clip05.events" / "outbox" / "pending").glob("*.json"))
    for line in ends:  # the receiver gets the picture, not a file name on this machine
        sent = delivered[f"{line['event_id']}-end"]
        assert base64.b64decode(sent["snapshot_jpeg"]) == (tmp_path / "clip05.events" / line["snapshot"]).read_bytes()
        assert sent["stream_id"] == "ped2_test05" and "snapshot_jpeg" not in line


def test_webhook_without_threshold_or_bad_url_is_one_line(ray_session, anomalous_clip, tmp_path, capsys):
    code = main(["score", str(anomalous_clip), "--out", str(tmp_path / "a.zarr"), "--webhook", "ftp://host/x", "--quiet"])
    assert (code, capsys.readouterr().err) == (2, "error: --webhook 'ftp://host/x': not an http:// or https:// URL\n")
    assert not (tmp_path / "a.zarr").exists()
