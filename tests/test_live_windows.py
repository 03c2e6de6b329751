"""Live window step and driver choices without Ray: gaps, frozen feeds, dropped windows, policies."""

import time
from collections import deque

import numpy as np

from anomstream.pipeline.driver.schedule import Decoded, ReplicaPool, StreamState, WriteItem, WriteKind, choose
from anomstream.pipeline.sources.base import Frame, Gap, Source
from anomstream.pipeline.store import FrameStatus
from anomstream.pipeline.stream.live import LiveOptions, LiveWindows
from anomstream.pipeline.stream.windows import BatchHeader, EndOfStream, WindowAssembler

S = FrameStatus


def _frame(i, value=None, t=None):
    return Frame("cam", i, float(i) if t is None else t, np.full((8, 8, 3), i if value is None else value, np.uint8))


def _check_windows(batch, window_length):
    """Every scored target's window is the T frames ending at it, in order (frame value = index)."""
    windows = batch.windows()
    for window, target in zip(windows, batch.frame_index[batch.valid]):
        np.testing.assert_array_equal(window[:, 0, 0, 0], np.arange(target - window_length + 1, target + 1))
    return len(windows)


def test_gap_restarts_windows_and_marks_frames_without_one():
    assembler = WindowAssembler("cam", 5, 8, 1)
    for i in range(10):
        assembler.push(_frame(i))
    assembler.note_gap(Gap(9.0, 12.0, "disconnect"))
    for i in range(12, 22):
        assembler.push(_frame(i))
    batch = assembler.batch()
    expected = [S.WARMUP] * 4 + [S.SCORED] * 6 + [S.SOURCE_GAP] * 4 + [S.SCORED] * 6
    assert batch.status.tolist() == expected
    assert _check_windows(batch, 5) == 12  # no window spans frames 9 -> 12
    assert assembler.take_gaps() == (Gap(9.0, 12.0, "disconnect"),) and assembler.take_gaps() == ()


def test_newest_policy_drops_whole_windows_and_keeps_context():
    assembler = WindowAssembler("cam", 5, 8, 1)
    for i in range(20):
        assembler.push(_frame(i))
    batch = assembler.batch(limit=4, newest=True)
    assert batch.frame_index.tolist() == list(range(20))
    assert batch.status.tolist() == [S.WARMUP] * 4 + [S.DROPPED_BEHIND] * 12 + [S.SCORED] * 4
    assert len(batch.frames) == 8  # images of dropped frames travel only as context of the scored ones
    assert _check_windows(batch, 5) == 4
    for i in range(20, 23):
        assembler.push(_frame(i))
    following = assembler.batch(limit=4, newest=True)
    assert following.status.tolist() == [S.SCORED] * 3 and _check_windows(following, 5) == 3


def test_frames_older_than_max_latency_are_dropped_oldest_first():
    assembler = WindowAssembler("cam", 2, 8, 1)
    for i in range(6):
        assembler.push(_frame(i, t=100.0 + i))
    batch = assembler.batch(limit=16, newest=True, max_age_s=2.5, now=105.0)
    assert batch.status.tolist() == [S.WARMUP, S.DROPPED_BEHIND, S.DROPPED_BEHIND, S.SCORED, S.SCORED, S.SCORED]
    assert _check_windows(batch, 2) == 3


def test_every_policy_takes_the_oldest_and_leaves_the_rest():
    assembler = WindowAssembler("cam", 3, 8, 1)
    for i in range(10):
        assembler.push(_frame(i))
    first, second = assembler.batch(limit=4), assembler.batch(limit=4)
    assert first.frame_index.tolist() == [0, 1, 2, 3] and second.frame_index.tolist() == [4, 5, 6, 7]
    assert second.context == 2 and _check_windows(second, 3) == 4
    assert len(assembler.pending) == 2


def test_frozen_feed_is_not_scored_and_becomes_a_gap():
    """A camera that keeps sending its last image: frames 0-9 move, 10-29 repeat frame 9, 30- move."""
    assembler = WindowAssembler("cam", 3, 8, 1, frozen_after_s=5.0)
    for i in range(40):
        assembler.push(_frame(i, value=min(i, 9) if i < 30 else i))
    status = assembler.batch().status
    assert (status[:2] == S.WARMUP).all() and (status[2:14] == S.SCORED).all()  # 9..13: same image, < 5 s so far
    assert (status[14:30] == S.FROZEN).all()  # from 5 s after the image last changed (t=9) until it changes
    assert status[30:32].tolist() == [S.SOURCE_GAP] * 2 and (status[32:] == S.SCORED).all()
    assert assembler.take_gaps() == (Gap(9.0, 30.0, "frozen"),)
    for i in range(40, 50):
        assembler.push(_frame(i, value=39))
    assembler.end(now=60.0)  # still frozen when the stream ends
    assert assembler.take_gaps() == (Gap(39.0, 60.0, "frozen"),)
    for i in range(50, 60):
        assembler.push(_frame(i, value=49))
    assembler.note_gap(Gap(59.5, 70.0, "disconnect"))  # a disconnect ends the frozen stretch where it starts
    assert assembler.take_gaps() == (Gap(50.0, 59.5, "frozen"), Gap(59.5, 70.0, "disconnect"))


class _PacedSource(Source):
    """A live source of ``count`` frames, one every ``interval`` seconds, with a gap after frame 9."""

    is_live = True

    def __init__(self, count, interval):
        self.stream_id, self.count, self.interval, self.warnings = "cam", count, interval, []
        self.read = 0

    def describe(self):
        return "paced"

    def frames(self):
        for i in range(self.count):
            if i == 10:
                yield Gap(9.0, 10.0, "stall")
            time.sleep(self.interval)
            self.read = i + 1
            yield _frame(i)


def _drain(live):
    batches, gaps = [], []
    while True:
        item = live.next()
        if isinstance(item, EndOfStream):
            return batches, gaps + list(item.gaps), item
        batch, new_gaps = item
        gaps += new_gaps
        if batch is not None:
            batches.append(batch)


def test_live_every_policy_delivers_every_frame_in_order_with_bounded_buffer():
    source = _PacedSource(40, 0.0)
    live = LiveWindows(source, 3, 4, 8, 1, LiveOptions(policy="every"))
    time.sleep(0.3)  # nobody asks: reading pauses once the buffer is full (backpressure)
    assert source.read <= live.buffer_frames + 1
    batches, gaps, end = _drain(live)
    assert np.concatenate([b.frame_index for b in batches]).tolist() == list(range(40))
    assert all(b.size <= 4 for b in batches) and end.frames == 40 and end.error is None
    assert gaps == [Gap(9.0, 10.0, "stall")]
    status = np.concatenate([b.status for b in batches])
    assert (status == S.DROPPED_BEHIND).sum() == 0 and (status[10:12] == S.SOURCE_GAP).all()


def test_max_latency_drops_under_latest_only():
    """Frames captured long ago (t = 0.0 .. 29.0 s since the epoch): ``latest`` drops them all,
    ``every`` drops none whatever --max-latency-ms says."""
    for policy, dropped in (("every", 0), ("latest", 26)):
        live = LiveWindows(_PacedSource(30, 0.0), 3, 4, 8, 1, LiveOptions(policy=policy, max_latency_ms=100, batch=4))
        batches, _, _ = _drain(live)
        status = np.concatenate([b.status for b in batches])
        assert (status == S.DROPPED_BEHIND).sum() == dropped, policy


def test_live_request_returns_what_is_ready_without_waiting_for_a_full_batch():
    live = LiveWindows(_PacedSource(6, 0.05), 2, 16, 8, 1, LiveOptions(policy="latest"))
    started = time.monotonic()
    batch, _ = live.next()
    while batch is None:
        batch, _ = live.next()
    assert batch.size < 16 and time.monotonic() - started < 0.5
    live.stop()
    rest, _, end = _drain(live)
    assert end.error is None and sum(b.size for b in [batch, *rest]) == end.frames


def test_stopped_live_stream_hands_out_what_it_read_then_ends():
    source = _PacedSource(1000, 0.01)
    live = LiveWindows(source, 3, 4, 8, 1, LiveOptions(policy="latest"))
    time.sleep(0.2)
    live.stop()
    batches, _, end = _drain(live)
    assert end.error is None and 0 < end.frames < 1000
    assert sum(b.size for b in batches) == end.frames  # every frame read has its row


def test_replica_pool_and_stream_choices():
    pool = ReplicaPool(2, 2)
    assert [pool.acquire() for _ in range(3)] == [0, 1, 0] and pool.has_room
    pool.acquire()
    assert not pool.has_room
    pool.release(1)
    assert pool.acquire() == 1

    latest = StreamState(decoder=None, next_sequence=0, next_row=0, policy="latest")
    every = StreamState(decoder=None, next_sequence=0, next_row=0)
    assert latest.wants_batch(waiting=10, capacity=4, replica_free=True)
    assert not latest.wants_batch(waiting=0, capacity=4, replica_free=False)  # decoded when a replica is free
    assert not every.wants_batch(waiting=4, capacity=4, replica_free=True)  # backpressure
    assert every.wants_batch(waiting=3, capacity=4, replica_free=False)
    latest.queued = 1
    assert not latest.wants_batch(waiting=0, capacity=4, replica_free=True)

    header = BatchHeader("cam", 0, 0, 4, scorable=4, newest=100.0)
    streams = {"cam": latest, "file": every}
    waiting = deque([Decoded("cam", header, "ref0"), Decoded("file", header, "ref1")])
    assert choose(waiting, streams, now=100.2, max_latency_s=0.1) == (Decoded("cam", header, "ref0"), True)
    assert choose(waiting, streams, now=100.2, max_latency_s=0.1) == (Decoded("file", header, "ref1"), False)
    assert choose(waiting, streams, now=100.2, max_latency_s=0.1) is None

    scored, unscored = WriteKind.SCORED, WriteKind.UNSCORED
    every.to_write = {1: WriteItem(scored, 4, "b", "rb"), 0: WriteItem(unscored, 2, "a"), 3: WriteItem(scored, 1, "d")}
    assert every.take_writable() == [(0, WriteItem(unscored, 2, "a")), (2, WriteItem(scored, 4, "b", "rb"))]
    assert every.next_sequence == 2 and every.next_row == 6 and list(every.to_write) == [3]

    # a fault: what is decoded but not written is forgotten, the new decoder starts at the next unwritten row
    every.queued, every.scoring, every.decode_pending = 2, 1, True
    assert every.rewind("decoder2") == 6
    assert (every.decoder, every.epoch, every.rewinds) == ("decoder2", 1, 1)
    assert (every.queued, every.scoring, every.decode_pending, every.to_write, every.ended) == (0, 0, False, {}, None)
    assert every.wants_batch(waiting=0, capacity=4, replica_free=False)
    # an error at batch 4: batches 2 and 3 are still written, 4 and later dropped
    every.to_write = {3: WriteItem(scored, 4, "d"), 5: WriteItem(scored, 4, "f")}
    every.end_at(4, EndOfStream("file", 0, "scoring failed"))
    assert list(every.to_write) == [3] and every.keeps(3) and not every.keeps(4)
    every.to_write[2] = WriteItem(scored, 4, "c")
    assert [row for row, _ in every.take_writable()] == [6, 10] and every.ended.error == "scoring failed"


def test_any_mix_of_requests_gaps_and_drops_scores_only_whole_contiguous_windows():
    """Seeded random arrivals, gaps, limits, policies and ages (small batches: fewer targets than a
    window, which once kept too little context): every scored window is the T frames ending at its
    target, none spans a gap."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        assembler, index, gaps_at = WindowAssembler("cam", 5, 8, 1), 0, set()
        for _ in range(20):
            for _ in range(rng.integers(0, 7)):
                if rng.random() < 0.05:
                    assembler.note_gap(Gap(index - 1.0, float(index), "stall"))
                    gaps_at.add(index)
                assembler.push(_frame(index))
                index += 1
            batch = assembler.batch(limit=int(rng.integers(1, 5)), newest=bool(rng.random() < 0.7),
                                    max_age_s=3.0 if rng.random() < 0.5 else None, now=float(index))
            if batch is not None:
                _check_windows(batch, 5)
                for target in batch.frame_index[batch.valid]:
                    assert not gaps_at & set(range(target - 3, target + 1))


def test_a_camera_held_by_the_scorer_under_policy_every_stays_live():
    """Policy ``every`` pauses reading when the buffer is full: the newest frame then ages because
    nothing reads the camera, which is not a hung camera."""
    from anomstream.pipeline.sources.camera import CameraSource, Reconnect

    class _FastCamera(CameraSource):
        def _frames(self):
            for i in range(1000):
                now = time.time()
                self._set_status("live", last_frame=now)
                yield _frame(i, t=now)

    source = _FastCamera("rtsp://127.0.0.1:9/cam", stream_id="cam", reconnect=Reconnect(stall_timeout_s=0.2))
    live = LiveWindows(source, 3, 4, 8, 1, LiveOptions(policy="every"))
    time.sleep(0.6)  # nobody asks: the buffer fills and the reader waits for room
    assert live.held
    now = time.time()
    assert source.live_status(now).state == "stalled"  # what the age alone would say
    status = live.camera_status(now)
    assert (status.state, status.reason) == ("live", "reading held: the replicas are behind (policy every)")
    live.next()  # room again: the reader reads on (and fills the buffer again at once)
    time.sleep(0.05)
    assert live.camera_status(time.time()).last_frame > status.last_frame
    live.stop()


def test_a_replay_for_a_grey_model_reads_grey_frames_and_still_shows_a_picture(short_clip):
    """A replayed frame folder (``--realtime``) for a one-channel model is decoded straight to grey, as
    its training, calibration and recordings are (sources.base.model_frames): the windows are the
    colour decode's turned grey (Ped2's JPEGs), and the live view's picture is a grey JPEG."""
    import cv2

    from anomstream.pipeline.sources.realtime import RealtimeSource
    from anomstream.pipeline.sources.resolve import open_sources
    from anomstream.pipeline.stream.preprocess import prepare_frame

    live = LiveWindows(RealtimeSource(open_sources(str(short_clip))[0], max_frames=12), 3, 4, 128, 1,
                       LiveOptions(policy="every", preview_size=64))
    batches, _, end = _drain(live)
    assert end.frames == 12 and live.newest.image.shape == (240, 360)
    colour = np.stack([prepare_frame(frame.image, 128, 1) for frame in open_sources(str(short_clip))[0].frames()])
    targets = np.concatenate([batch.frame_index[batch.valid] for batch in batches])
    assert targets.tolist() == list(range(2, 12))
    np.testing.assert_array_equal(np.concatenate([batch.windows() for batch in batches]),
                                  np.stack([colour[t - 2:t + 1] for t in targets]))
    previews = [batch.preview for batch in batches if batch.preview is not None]
    assert previews and cv2.imdecode(np.frombuffer(previews[0][1], np.uint8), cv2.IMREAD_UNCHANGED).shape == (43, 64)
