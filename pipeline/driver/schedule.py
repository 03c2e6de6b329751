"""The driver's choices, without Ray: which replica takes a batch, which waiting batch is scored or
dropped, when a stream asks its decoder for more, and the order results are written in.

References (``ref``) are opaque here: Ray object references in a run, anything in tests.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..stream.live import Policy
from ..stream.windows import BatchHeader, EndOfStream

SILENT_ANSWERS = 4  # answers without a frame in a row (each waits LiveOptions.idle_wait_s, 0.5 s) that make a stream silent


@dataclass
class ReplicaSlot:
    """One replica's place in the run: its actor (replaced in place when Ray gives it up), the
    process and node its answers came from last (None: none yet), and how often it was replaced."""

    actor: Any
    pid: int | None = None
    node: str | None = None
    replacements: int = 0


class ReplicaPool:
    """Batches in flight per replica; a batch goes to the least loaded one, within capacity."""

    def __init__(self, replicas: int, in_flight_per_replica: int) -> None:
        self.load = [0] * replicas
        self.capacity = replicas * in_flight_per_replica

    @property
    def has_room(self) -> bool:
        return sum(self.load) < self.capacity

    @property
    def idle(self) -> int:
        """Replicas with nothing to score."""
        return self.load.count(0)

    def acquire(self) -> int:
        target = min(range(len(self.load)), key=self.load.__getitem__)
        self.load[target] += 1
        return target

    def release(self, replica: int) -> None:
        self.load[replica] -= 1


class WriteKind(Enum):
    """How a batch's rows reach the writer: scored by a replica, with nothing in it to score
    (warm-up, gap, frozen frames), or dropped unscored (policy ``latest``, too old)."""

    SCORED = "scored"
    UNSCORED = "unscored"
    DROPPED = "dropped"


@dataclass(frozen=True)
class WriteItem:
    """A batch's rows waiting for their turn to be written (results leave in frame order).

    ``batch``: the decoded batch (its reference); ``result``: the replica's rows (SCORED only);
    ``shown``: the batch passed along to the writer for the live view and event snapshots (SCORED
    only; None: the writer takes no picture from these rows)."""

    kind: WriteKind
    size: int  # rows
    batch: Any
    result: Any = None
    shown: Any = None


@dataclass
class Decoded:
    """A decoded batch waiting for a replica."""

    stream_id: str
    header: BatchHeader
    ref: Any
    epoch: int = 0  # the stream's epoch when it was decoded
    attempts: int = 0  # replicas lost while they held it


@dataclass
class StreamState:
    """One open stream: its decoder, what is decoded but not yet written, and where writing resumes.

    Rows are written one after another: a still image that cannot be decoded leaves no empty row
    (its frame index is simply absent), so the row is not always the frame index."""

    decoder: Any
    next_sequence: int  # batches before it are in the store already (resume)
    next_row: int
    policy: Policy = "every"
    decode_pending: bool = False
    last_request: int = 0  # when it last asked its decoder (the loop's request count): the longest waiting goes first
    stopping: bool = False  # asked to stop (live): what was read is still written
    ended: EndOfStream | None = None
    epoch: int = 0  # raised when the stream is decoded again from its written rows: older answers are stale
    rewinds: int = 0  # times decoded again after a fault
    cut: int | None = None  # ended with an error at this batch: it and later ones are not written
    queued: int = 0  # decoded batches waiting for a replica
    empty_answers: int = 0  # its decoder's answers in a row without a frame
    scoring: int = 0  # batches inside a replica
    to_write: dict[int, WriteItem] = field(default_factory=dict)  # batch sequence -> its rows, waiting for their turn

    @property
    def silent(self) -> bool:
        """Its camera sent nothing for SILENT_ANSWERS answers in a row (~2 s: down, stalled,
        connecting): its requests claim no replica (a slow camera's still do)."""
        return self.empty_answers >= SILENT_ANSWERS

    @property
    def finished(self) -> bool:
        return self.ended is not None and self.queued == 0 and self.scoring == 0 and not self.to_write

    def wants_batch(self, waiting: int, capacity: int, replica_free: bool) -> bool:
        """Whether to ask the decoder for the next batch now. ``every`` keeps the queue of decoded
        batches (``waiting``, all streams) under ``capacity`` (backpressure); ``latest`` asks only
        when a replica is free for it and it has nothing waiting, so that the frames taken from the
        source are scored at once and are the newest there are; a silent one also when none is (its
        request mostly waits for a frame that does not come, and its answers carry the camera's state)."""
        if self.ended is not None or self.decode_pending:
            return False
        return self.queued == 0 and (replica_free or self.silent) if self.policy == "latest" else waiting < capacity

    def rewind(self, decoder: Any, row: int | None = None, sequence: int | None = None) -> int:
        """Forget what is decoded but not yet sent to the writer (a fault lost it, or may have): the
        stream is decoded again by ``decoder`` from its next unwritten row, which it returns.
        ``row``, ``sequence``: go back further, to this row and batch (what a new writer found on
        disk; this does not count as one of the stream's ``rewinds``)."""
        self.decoder, self.epoch = decoder, self.epoch + 1
        if row is None:
            self.rewinds += 1
        else:
            self.next_row, self.next_sequence = row, sequence if sequence is not None else self.next_sequence
        self.decode_pending, self.ended, self.cut, self.queued, self.scoring = False, None, None, 0, 0
        self.to_write.clear()
        return self.next_row

    def end_at(self, sequence: int, ended: EndOfStream) -> None:
        """End the stream with an error at batch ``sequence``: the batches before it are still
        written as they come; it and later ones are dropped (the caller drops their queued items,
        answers to those in flight are dropped on arrival, see :meth:`keeps`)."""
        self.ended, self.cut = ended, sequence
        for later in [s for s in self.to_write if s >= sequence]:
            del self.to_write[later]

    def keeps(self, sequence: int) -> bool:
        """Whether batch ``sequence`` (of this epoch) is still to be written."""
        return self.cut is None or sequence < self.cut

    def take_writable(self) -> list[tuple[int, WriteItem]]:
        """(store row of its first frame, item) of the results next in frame order, in order;
        advances the rows."""
        writable = []
        while self.next_sequence in self.to_write:
            item = self.to_write.pop(self.next_sequence)
            writable.append((self.next_row, item))
            self.next_row += item.size
            self.next_sequence += 1
        return writable


def choose(waiting: deque[Decoded], streams: dict[str, StreamState], now: float,
           max_latency_s: float | None) -> tuple[Decoded, bool] | None:
    """The next waiting batch for a free replica and whether to drop it instead (policy ``latest``:
    its newest frame was captured more than ``max_latency_s`` before ``now``)."""
    if not waiting:
        return None
    item = waiting.popleft()
    stale = max_latency_s is not None and now - item.header.newest > max_latency_s
    return item, streams[item.stream_id].policy == "latest" and stale
