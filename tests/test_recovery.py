"""The driver's recovery policies and dispatcher, without Ray: each fault kind's decision on its own."""

from __future__ import annotations

import pytest

from anomstream.pipeline.driver.dispatch import Dispatcher
from anomstream.pipeline.driver.faults import FaultLog
from anomstream.pipeline.driver.recovery import BatchRetry, Redecode, ReplicaRecovery, WriterTakeover, model_failed
from anomstream.pipeline.driver.schedule import SILENT_ANSWERS, Decoded, ReplicaPool, ReplicaSlot, StreamState, WriteKind
from anomstream.pipeline.errors import AnomstreamError
from anomstream.pipeline.stream.windows import BatchHeader, EndOfStream


class Actions:
    """Records the steps a policy takes; ``end_stream`` acts on a real Dispatcher."""

    def __init__(self, dispatcher: Dispatcher | None = None) -> None:
        self.dispatcher, self.calls, self.decoders = dispatcher, [], 0

    def send(self, item):
        self.calls.append(("send", item.header.sequence))

    def end_stream(self, stream_id, reason, at=None):
        self.calls.append(("end", stream_id, reason, None if at is None else at.header.sequence))
        if self.dispatcher is not None:
            self.dispatcher.end_stream(stream_id, reason, at)

    def replace_replica(self, index):
        self.calls.append(("replace_replica", index))

    def replace_decoder(self, stream_id):
        self.decoders += 1
        return f"decoder{self.decoders}"

    def start_decoding(self, stream_id, decoder, row):
        self.calls.append(("decode", stream_id, decoder, row))


def _item(sequence: int, size: int = 16, stream_id: str = "a", epoch: int = 0) -> Decoded:
    return Decoded(stream_id, BatchHeader(stream_id, sequence, sequence * size, size, scorable=size), f"b{sequence}", epoch)


def _dispatcher(*streams: str, policy: str = "every", replicas: int = 2) -> Dispatcher:
    dispatcher = Dispatcher(ReplicaPool(replicas, 2))
    for stream_id in streams:
        dispatcher.open(stream_id, StreamState("decoder0", 0, 0, policy))
    return dispatcher


def test_a_replica_answering_from_a_new_process_was_restarted_by_ray():
    faults = FaultLog(echo=False)
    recovery, slot = ReplicaRecovery(faults), ReplicaSlot("actor")
    recovery.answered(0, slot, pid=11, node="n1")
    recovery.answered(0, slot, pid=11, node="n1")
    assert not faults.counts and (slot.pid, slot.node) == (11, "n1")
    recovery.answered(0, slot, pid=12, node="n2")
    assert faults.counts == {"replica_restarted": 1} and (slot.pid, slot.node) == (12, "n2")
    assert faults.lines == ["replica 0 process 11 lost; Ray restarted it as process 12 and sent its batches again"]


def test_a_replica_ray_gave_up_on_is_replaced_until_its_slot_ran_out_of_replacements():
    faults = FaultLog(echo=False)
    recovery, actions = ReplicaRecovery(faults, limit=2), Actions()
    recovery.lost(1, ReplicaSlot("actor", replacements=0), "actor died", actions)
    recovery.lost(1, ReplicaSlot("actor", replacements=1), "actor died", actions)
    assert actions.calls == [("replace_replica", 1)] * 2 and faults.counts == {"replica_replaced": 2}
    assert faults.lines[0] == "replica 1 lost for good (actor died); a new replica takes its place"
    with pytest.raises(AnomstreamError, match=r"^replica 1 keeps being lost \(2 replaced; last: actor died\)$"):
        recovery.lost(1, ReplicaSlot("actor", replacements=2), "actor died", actions)
    assert len(actions.calls) == 2


def test_a_batch_whose_replica_was_lost_is_resent_then_its_stream_ends():
    faults, dispatcher = FaultLog(echo=False), _dispatcher("a")
    actions, retry, item = Actions(dispatcher), BatchRetry(faults, limit=3), _item(1)
    stream = dispatcher.streams["a"]
    stream.scoring = 1  # the batch was in a replica
    retry.lost(item, "clip.avi", actions)
    retry.lost(item, "clip.avi", actions)
    assert actions.calls == [("send", 1), ("send", 1)] and faults.counts == {"batch_resent": 2}
    retry.lost(item, "clip.avi", actions)
    assert actions.calls[-1] == ("end", "a", "clip.avi: 3 replicas lost while scoring frames 16-31", 1)
    assert stream.ended.error == "clip.avi: 3 replicas lost while scoring frames 16-31" and stream.cut == 1
    assert stream.scoring == 0 and faults.counts == {"batch_resent": 2}


def test_a_model_error_ends_its_stream_at_that_batch_and_keeps_the_batches_before_it():
    dispatcher = _dispatcher("a", "b")
    stream = dispatcher.streams["a"]
    for sequence in range(4):
        dispatcher.accept("a", _item(sequence).header, f"b{sequence}")
    assigned = dispatcher.assign(now=0.0, max_latency_s=None)  # 4 in flight: capacity 2 replicas x 2
    assert [a.item.header.sequence for a in assigned] == [0, 1, 2, 3] and stream.scoring == 4
    dispatcher.scored(assigned[0].item, "r0", None)
    assert dispatcher.answer_counts(assigned[2].item)
    model_failed(assigned[2].item, "clip.avi", ValueError("bad input\nmore"), Actions(dispatcher))
    assert stream.ended.error == "clip.avi: scoring failed at frame 32 (ValueError: bad input)"
    assert not dispatcher.answer_counts(assigned[3].item)  # after the cut: dropped on arrival, taken off the count
    assert dispatcher.answer_counts(assigned[1].item)
    dispatcher.scored(assigned[1].item, "r1", None)
    assert [(row, item.kind, item.result) for row, item in stream.take_writable()] == \
        [(0, WriteKind.SCORED, "r0"), (16, WriteKind.SCORED, "r1")]
    assert stream.finished and "b" in dispatcher.streams and dispatcher.streams["b"].ended is None


def test_a_lost_decoder_makes_its_stream_decode_again_until_the_limit():
    faults, dispatcher = FaultLog(echo=False), _dispatcher("a", "b")
    stream, redecode = dispatcher.streams["a"], Redecode(faults, limit=2)
    actions = Actions(dispatcher)
    dispatcher.accept("a", _item(0).header, "b0")
    dispatcher.accept("b", _item(0, stream_id="b").header, "c0")
    stream.next_row, stream.next_sequence = 32, 2  # two batches written
    redecode.lost(dispatcher, "a", "clip.avi", False, "decoder of stream a lost (gone)", actions)
    assert actions.calls == [("decode", "a", "decoder1", 32)] and stream.epoch == 1 and stream.rewinds == 1
    assert [item.stream_id for item in dispatcher.decoded] == ["b"]  # a's queued batch is stale now
    assert faults.lines == ["decoder of stream a lost (gone); stream a decoded again from row 32"]
    redecode.lost(dispatcher, "a", "clip.avi", False, "lost again", actions)
    redecode.lost(dispatcher, "a", "clip.avi", False, "lost a third time", actions)
    assert actions.calls[-1] == ("end", "a", "clip.avi: lost a third time; given up after 2 new start(s)", None)
    assert stream.ended.error.endswith("given up after 2 new start(s)") and stream.decoder == "decoder3"
    assert faults.counts == {"stream_redecoded": 2}


def test_a_live_stream_that_lost_its_decoder_ends_instead_of_going_back():
    faults, dispatcher = FaultLog(echo=False), _dispatcher("cam", policy="latest")
    actions = Actions(dispatcher)
    Redecode(faults).lost(dispatcher, "cam", "rtsp://cam", True, "decoder of stream cam lost (x)", actions)
    assert actions.calls == [("end", "cam", "rtsp://cam: decoder of stream cam lost (x); a live stream cannot be "
                                       "read again", None)]
    assert not faults.counts and dispatcher.streams["cam"].ended is not None


def test_a_writer_takeover_sets_every_stream_back_to_its_written_rows():
    faults, dispatcher = FaultLog(echo=False), _dispatcher("a", "b")
    takeover = WriterTakeover(faults, possible=True, limit=1)
    a, b = dispatcher.streams["a"], dispatcher.streams["b"]
    a.next_row, a.next_sequence, a.scoring = 48, 3, 1
    b.next_row, b.next_sequence = 32, 2
    b.end_at(2, EndOfStream("b", 32, "scoring failed"))
    dispatcher.accept("a", _item(3).header, "b3")
    assert takeover.allowed()
    steps = takeover.rewind(dispatcher, {"a": 16, "b": 32}, batch_size=16)
    assert [(s.stream_id, s.row, s.resent, s.restart) for s in steps] == [("a", 16, 32, True), ("b", 32, 0, False)]
    assert (a.next_row, a.next_sequence, a.scoring, a.epoch, a.rewinds) == (16, 1, 0, 1, 0)  # not a re-decode
    assert not dispatcher.decoded and b.ended.error == "scoring failed"
    takeover.noted(2, 2, "writer died")
    assert faults.lines == ["writer lost (writer died); 2 new writers took over the store and 2 open stream(s) go on "
                            "from their written rows (an event open at the loss starts again)"]
    assert not takeover.allowed()  # the limit
    assert not WriterTakeover(faults, possible=False).allowed()  # a live or rotating run


def test_a_latest_stream_asks_again_after_its_only_batch_was_dropped():
    """--max-latency-ms once stalled a run: the dropped batch left nothing in flight and nobody asked."""
    dispatcher = _dispatcher("cam", policy="latest", replicas=1)
    assert dispatcher.to_request() == ["cam"]
    stream = dispatcher.streams["cam"]
    stream.decode_pending = False
    dispatcher.accept("cam", BatchHeader("cam", 0, 0, 1, scorable=1, newest=100.0), "b0")
    assert dispatcher.to_request() == []  # its batch waits for the replica
    (assignment,) = dispatcher.assign(now=101.0, max_latency_s=0.001)
    assert assignment.replica is None and stream.to_write[0].kind is WriteKind.DROPPED
    assert dispatcher.to_request() == ["cam"]  # the loop's settle asks again instead of calling it a stall


def test_cameras_that_send_nothing_claim_no_replica_from_a_camera_that_does():
    """Two cameras down and one live on two replicas (latest): the down ones' requests wait for
    frames that do not come and used to claim both replicas, so the live one asked for a batch
    rarely (80 % of its frames dropped behind, the replicas 2-3 % busy: a new user's trial). After
    SILENT_ANSWERS empty answers in a row (~2 s) a camera asks without a claim; a slow camera
    (an empty answer now and then) still claims."""
    dispatcher = _dispatcher("live", "down1", "down2", policy="latest", replicas=2)
    streams = dispatcher.streams

    def answer(stream_id: str, size: int, sequence: int = 0) -> None:
        streams[stream_id].decode_pending = False  # as the loop does with each answer
        dispatcher.accept(stream_id, BatchHeader(stream_id, sequence if size else -1, 0, size, scorable=size), "b")

    assert dispatcher.to_request() == ["live", "down1"]  # each claims a free replica
    answer("down1", 0)
    assert not streams["down1"].silent and dispatcher.to_request() == ["down2"]  # one empty answer: down1 still claims
    for _ in range(3 * SILENT_ANSWERS):  # the down cameras answer nothing, each in its turn
        for stream_id in ("down1", "down2"):
            if streams[stream_id].decode_pending:
                answer(stream_id, 0)
        dispatcher.to_request()
    assert streams["down1"].silent and streams["down2"].silent
    assert streams["down1"].decode_pending and streams["down2"].decode_pending  # both ask, neither claims
    answer("live", 16)
    assert [a.replica for a in dispatcher.assign(0.0, None)] == [0]
    assert dispatcher.to_request() == ["live"]  # the idle replica is live's: no silent camera claims it
    answer("down2", 16)  # back: not silent, its batch waits for a replica
    assert not streams["down2"].silent and streams["down2"].queued == 1
    assert dispatcher.to_request() == []  # live's request and down2's batch claim what is free


def test_every_stream_waits_its_turn_and_backpressure_bounds_the_queue():
    dispatcher = _dispatcher("a", "b", replicas=1)  # capacity 2
    assert dispatcher.to_request() == ["a", "b"]
    for stream_id in "ab":
        dispatcher.streams[stream_id].decode_pending = False
        dispatcher.accept(stream_id, _item(0, stream_id=stream_id).header, "x")
    assert dispatcher.to_request() == []  # 2 waiting = capacity
    assert [a.replica for a in dispatcher.assign(0.0, None)] == [0, 0] and not dispatcher.pool.has_room
    assert dispatcher.to_request() == ["a", "b"]  # in arrival order of their last request
