"""The run's open streams and what to do next with each, without Ray.

:class:`Dispatcher` holds every open stream's :class:`StreamState` and the decoded batches waiting
for a replica. It answers the loop's questions (which streams ask their decoder now, which waiting
batch goes to which replica or is dropped, what is next in frame order for the writer) and takes
in what arrived (a decoder's header, a replica's answer). It never calls an actor: the loop
(:mod:`pipeline.driver.loop`) carries its answers out. References (``ref``) are opaque here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from ..stream.windows import BatchHeader, EndOfStream
from .schedule import Decoded, ReplicaPool, StreamState, WriteItem, WriteKind, choose


@dataclass(frozen=True)
class Assignment:
    """A waiting batch taken off the queue: scored by replica slot ``replica``, or dropped unscored
    (``replica`` None; policy ``latest``, too old)."""

    item: Decoded
    replica: int | None


class Dispatcher:
    """Open streams (``streams``, by stream id) and decoded batches waiting for a replica
    (``decoded``, in arrival order), with the replicas' load (``pool``)."""

    def __init__(self, pool: ReplicaPool) -> None:
        self.pool = pool
        self.streams: dict[str, StreamState] = {}
        self.decoded: deque[Decoded] = deque()
        self.requests = 0  # decoder requests so far: a stream's last one orders who asks next

    def open(self, stream_id: str, stream: StreamState) -> None:
        self.streams[stream_id] = stream

    def close(self, stream_id: str) -> StreamState:
        return self.streams.pop(stream_id)

    def to_request(self) -> list[str]:
        """Streams that ask their decoder for a batch now, longest waiting first; each is marked as
        waiting for its answer. A ``latest`` stream asks only when a replica is free for it, but for
        a silent one (:attr:`StreamState.silent`: a camera that is down claimed a replica for each
        wait, and as many down cameras as replicas starved the live ones, 80 % of their frames
        dropped while the replicas idled)."""
        latest = [s for s in self.streams.values() if s.policy == "latest"]
        claimed = sum((s.decode_pending and not s.silent) + s.queued for s in latest)
        free = self.pool.idle - claimed  # replicas no latest batch claims
        asking = []
        for stream_id, stream in sorted(self.streams.items(), key=lambda item: item[1].last_request):
            if stream.wants_batch(len(self.decoded), self.pool.capacity, replica_free=free > 0):
                stream.decode_pending = True
                self.requests += 1
                stream.last_request = self.requests
                free -= stream.policy == "latest" and not stream.silent
                asking.append(stream_id)
        return asking

    def accept(self, stream_id: str, header: BatchHeader | EndOfStream, batch: Any) -> bool:
        """A decoder's answer for a current stream: its end, rows with nothing to score (straight to
        the writer's queue), or a batch to score (queued for a replica). Returns whether the
        stream's writer queue or end changed (the caller then flushes it)."""
        stream = self.streams[stream_id]
        if isinstance(header, EndOfStream):
            stream.ended = header
            return True
        stream.empty_answers = 0 if header.size else stream.empty_answers + 1
        if header.size and not header.scorable:  # warm-up, gap or frozen frames only
            stream.to_write[header.sequence] = WriteItem(WriteKind.UNSCORED, header.size, batch)
            return True
        if header.size:
            stream.queued += 1
            self.decoded.append(Decoded(stream_id, header, batch, stream.epoch))
        return False

    def assign(self, now: float, max_latency_s: float | None) -> list[Assignment]:
        """Waiting batches taken while a replica has room: each to the least loaded replica, or
        dropped (queued for the writer as DROPPED) when it is too old (``now``: seconds since the
        epoch, as the batches' capture times)."""
        assigned = []
        while self.pool.has_room and self.decoded:
            item, drop = choose(self.decoded, self.streams, now, max_latency_s)
            stream = self.streams[item.stream_id]
            stream.queued -= 1
            if drop:
                stream.to_write[item.header.sequence] = WriteItem(WriteKind.DROPPED, item.header.size, item.ref)
                assigned.append(Assignment(item, None))
                continue
            stream.scoring += 1
            assigned.append(Assignment(item, self.pool.acquire()))
        return assigned

    def answer_counts(self, item: Decoded) -> bool:
        """Whether a replica's answer about ``item`` still counts: its stream was not decoded again
        since, nor ended before it. An answer for a batch past the stream's end is taken off the
        stream's count in flight (the caller then looks whether the stream is finished)."""
        stream = self.streams.get(item.stream_id)
        if stream is None or item.epoch != stream.epoch:
            return False  # the counts were reset when the stream was decoded again
        if not stream.keeps(item.header.sequence):
            stream.scoring -= 1
            return False
        return True

    def scored(self, item: Decoded, result: Any, shown: Any) -> None:
        """A replica's rows for ``item`` (which counts): queued for the writer in frame order."""
        stream = self.streams[item.stream_id]
        stream.scoring -= 1
        stream.to_write[item.header.sequence] = WriteItem(WriteKind.SCORED, item.header.size, item.ref, result, shown)

    def forget_decoded(self, stream_id: str) -> None:
        """Drop the stream's batches waiting for a replica (it is decoded again from its rows)."""
        self.decoded = deque(item for item in self.decoded if item.stream_id != stream_id)

    def end_stream(self, stream_id: str, reason: str, at: Decoded | None = None) -> None:
        """End a stream with ``reason`` at batch ``at`` (None: at its next unwritten row): the
        batches before it are still written, it and the rest are dropped."""
        stream = self.streams[stream_id]
        dropped = {id(item) for item in self.decoded
                   if item.stream_id == stream_id and (at is None or item.header.sequence >= at.header.sequence)}
        self.decoded = deque(item for item in self.decoded if id(item) not in dropped)
        if at is None:
            stream.rewind(stream.decoder)  # counts reset: answers still in flight are stale
            sequence = stream.next_sequence
        else:
            stream.queued -= len(dropped)
            stream.scoring -= 1  # ``at`` itself: its answer came, and failed
            sequence = at.header.sequence
        stream.end_at(sequence, EndOfStream(stream_id, stream.next_row, reason))

    def too_short(self, stream_id: str, source: str, window_length: int) -> list[str]:
        """A warning for a finished stream that ended cleanly before one full window (it has no
        score), or that was stopped before its source sent a frame (a camera that never came up)."""
        stream = self.streams[stream_id]
        frames = stream.ended.frames
        if stream.ended.error is not None or frames >= window_length:
            return []
        if stream.stopping:
            return [f"{source}: no frame received before the run stopped"] if frames == 0 else []
        return [f"{source}: {frames} frame(s), fewer than the {window_length} of the model's window: no frame is scored"]
