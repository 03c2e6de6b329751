"""What the driver does about each kind of fault, without Ray: one small policy per kind.

The loop (:mod:`pipeline.driver.loop`) tells a Ray failure's kind apart and hands it to its policy;
the policy decides and acts through :class:`LoopActions` (the loop's own small steps: send a batch,
end a stream, replace an actor, start decoding) and the :class:`Dispatcher`'s state. Each fault
is one line in the run's :class:`FaultLog` (``report.faults``, the store's ``faults`` attrs).

| fault kind | policy | what happens |
| --- | --- | --- |
| ``replica_restarted`` | :class:`ReplicaRecovery.answered` | Ray restarted the process and sent its batches again: noted |
| ``replica_replaced`` | :class:`ReplicaRecovery.lost` | Ray gave the replica up: a new actor in its slot (at most 3 per slot) |
| ``batch_resent`` | :class:`BatchRetry` | the batch goes to a replica again (3 replicas lost holding it: its stream ends) |
| ``stream_redecoded`` | :class:`Redecode` | a decoder or a decoded batch was lost: decoded again from the next unwritten row |
| ``writer_replaced`` | :class:`WriterTakeover` | every writer replaced; open streams go on from their ``written`` marks |
| (none: a stream error) | :func:`model_failed` | the model raised: that stream ends there, its earlier batches are written |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import AnomstreamError, first_line
from .dispatch import Dispatcher
from .faults import FaultLog
from .schedule import Decoded, ReplicaSlot

MAX_REDECODES = 3  # a stream decoded again more often than this after faults ends with an error
MAX_REPLACEMENTS_PER_REPLICA = 3  # beyond Ray's own restarts; then the run ends with an error
MAX_BATCH_ATTEMPTS = 3  # replicas lost while holding one batch before its stream ends with an error
MAX_WRITER_TAKEOVERS = 3  # new writers started in one run; then the run ends, telling to --resume


class LoopActions(Protocol):
    """The loop's steps a policy may take."""

    def send(self, item: Decoded) -> None:
        """Send a decoded batch to the least loaded replica."""

    def end_stream(self, stream_id: str, reason: str, at: Decoded | None = None) -> None:
        """End a stream with an error at batch ``at`` (None: its next unwritten row)."""

    def replace_replica(self, index: int) -> None:
        """Kill replica ``index`` for good and start a new one in its slot."""

    def replace_decoder(self, stream_id: str) -> Any:
        """Kill the stream's decoder and start a new one (returned; not opened yet)."""

    def start_decoding(self, stream_id: str, decoder: Any, row: int) -> None:
        """``decoder`` opens the stream's source; its first batch starts at store row ``row``."""


class ReplicaRecovery:
    """A replica answering from another process than before was restarted by Ray (which sent its
    batches again): one line. A replica Ray gave up on is killed and replaced in its slot, at most
    ``limit`` times per slot; then the run ends (AnomstreamError)."""

    def __init__(self, faults: FaultLog, limit: int = MAX_REPLACEMENTS_PER_REPLICA) -> None:
        self.faults, self.limit = faults, limit

    def answered(self, index: int, slot: ReplicaSlot, pid: int, node: str) -> None:
        """Replica ``index`` answered from process ``pid`` on ``node``."""
        known, slot.pid, slot.node = slot.pid, pid, node
        if known is not None and known != pid:
            self.faults.note("replica_restarted", f"replica {index} process {known} lost; Ray restarted it as "
                                                  f"process {pid} and sent its batches again")

    def lost(self, index: int, slot: ReplicaSlot, failure: str, actions: LoopActions) -> None:
        """Ray gave replica ``index`` up (``failure``: the error's first line)."""
        if slot.replacements >= self.limit:
            raise AnomstreamError(f"replica {index} keeps being lost ({slot.replacements} replaced; last: {failure})")
        actions.replace_replica(index)
        self.faults.note("replica_replaced", f"replica {index} lost for good ({failure}); a new replica takes its place")


class BatchRetry:
    """A batch whose replica was lost before answering goes to a replica again; after ``limit``
    replicas lost while holding it, its stream ends there (a batch that kills its replica)."""

    def __init__(self, faults: FaultLog, limit: int = MAX_BATCH_ATTEMPTS) -> None:
        self.faults, self.limit = faults, limit

    def lost(self, item: Decoded, source: str, actions: LoopActions) -> None:
        item.attempts += 1
        if item.attempts >= self.limit:
            first = item.header.first_frame_index
            actions.end_stream(item.stream_id, f"{source}: {item.attempts} replicas lost while scoring frames "
                                               f"{first}-{first + item.header.size - 1}", item)
        else:
            self.faults.note("batch_resent")
            actions.send(item)


class Redecode:
    """A stream whose decoder died, or one of whose decoded batches was lost with its node, is
    decoded again from its next unwritten row by a new decoder. A live stream cannot go back, and a
    stream decoded again ``limit`` times already ends instead (what was written is kept)."""

    def __init__(self, faults: FaultLog, limit: int = MAX_REDECODES) -> None:
        self.faults, self.limit = faults, limit

    def lost(self, dispatcher: Dispatcher, stream_id: str, source: str, live: bool, why: str,
             actions: LoopActions) -> None:
        stream = dispatcher.streams[stream_id]
        if live or stream.rewinds >= self.limit:
            stream.decoder = actions.replace_decoder(stream_id)
            limit = "a live stream cannot be read again" if live else f"given up after {stream.rewinds} new start(s)"
            actions.end_stream(stream_id, f"{source}: {why}; {limit}")
            return
        dispatcher.forget_decoded(stream_id)
        row = stream.rewind(actions.replace_decoder(stream_id))
        actions.start_decoding(stream_id, stream.decoder, row)
        self.faults.note("stream_redecoded", f"{why}; stream {stream_id} decoded again from row {row}")


def model_failed(item: Decoded, source: str, cause: BaseException, actions: LoopActions) -> None:
    """The model raised on ``item``: its stream ends at that batch (the batches before it are
    still written), the other streams go on."""
    actions.end_stream(item.stream_id, f"{source}: scoring failed at frame {item.header.first_frame_index} "
                                       f"({type(cause).__name__}: {first_line(cause)})", item)


@dataclass(frozen=True)
class TakenOver:
    """What a writer takeover does to one open stream: ``resent`` rows the lost writers had been
    sent after its ``written`` mark (taken off the run's count), and whether it is decoded again
    from there (``restart``) or closed with the error it had already ended with."""

    stream_id: str
    row: int
    resent: int
    restart: bool


class WriterTakeover:
    """A lost writer (or a scored batch lost on its way to it) is replaced, with the others, by
    writers that reopen the store, and every open stream goes on from its ``written`` mark. Only
    where new writers can be made (``possible``: not a live or rotating run) and at most ``limit``
    times a run; otherwise the run ends and ``--resume`` goes on."""

    def __init__(self, faults: FaultLog, possible: bool, limit: int = MAX_WRITER_TAKEOVERS) -> None:
        self.faults, self.possible, self.limit = faults, possible, limit
        self.takeovers = 0

    def allowed(self) -> bool:
        return self.possible and self.takeovers < self.limit

    def rewind(self, dispatcher: Dispatcher, written: dict[str, int], batch_size: int) -> list[TakenOver]:
        """Every open stream set back to its row ``written[stream_id]`` (what the new writers found
        on disk); streams that had ended with an error stay ended (their counts cleared)."""
        self.takeovers += 1
        steps = []
        for stream_id, stream in dispatcher.streams.items():
            row = written[stream_id]
            dispatcher.forget_decoded(stream_id)
            resent = stream.next_row - row
            failed = stream.ended is not None and stream.ended.error is not None
            if failed:
                stream.next_row, stream.queued, stream.scoring = row, 0, 0
                stream.to_write.clear()
            else:
                stream.rewind(stream.decoder, row=row, sequence=row // batch_size)
            steps.append(TakenOver(stream_id, row, resent, restart=not failed))
        return steps

    def noted(self, writers: int, streams: int, failure: str) -> None:
        taking_over = "a new writer" if writers == 1 else f"{writers} new writers"
        self.faults.note("writer_replaced", f"writer lost ({failure}); {taking_over} took over the store "
                                            f"and {streams} open stream(s) go on from their written rows "
                                            f"(an event open at the loss starts again)")
