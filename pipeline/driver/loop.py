"""The driver's event loop on Ray: keeps replicas busy, decoders just ahead, writes in frame order.

The loop only moves object references: a decoded batch goes from a decode actor straight to a
replica (or to the writer when nothing in it is to be scored or it is dropped), and a result from a
replica straight to the writer. Who does what:

- :class:`~pipeline.driver.dispatch.Dispatcher` (no Ray): the open streams' state, which stream
  asks its decoder, which batch goes to which replica, what is next in frame order;
- :mod:`pipeline.driver.recovery` (no Ray): one policy per fault kind;
- :class:`~pipeline.driver.actors.ActorPool`: the actors (creation, replacement, teardown);
- :class:`~pipeline.driver.reporter.Reporter`: progress, the live table, events, busy shares;
- this module: waits on Ray, tells a failure's kind apart, and carries the decisions out.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayError, RayTaskError

from ..errors import AnomstreamError, StoreError, cause_line, first_line
from ..sources.base import Source
from ..stream.windows import EndOfStream
from .actors import ActorPool
from .cameras import CameraWatch
from .dispatch import Dispatcher
from .opening import StreamOpener, StreamSetup
from .recovery import BatchRetry, Redecode, ReplicaRecovery, WriterTakeover, model_failed
from .report import RunReport
from .reporter import EventRelay, Reporter
from .schedule import Decoded, ReplicaPool
from .writing import RowSender

WAIT_S = 0.25  # longest the loop waits on actors before it looks at the clock (duration, stop, table)
SETTLE_S = 5.0  # a run ending on a lost writer lets the batches in the replicas finish this long at most


class ScoringLoop:
    """One run's streams from their decoders through the replicas to their writers.

    ``deadline``: time.monotonic() at which every stream is stopped; ``stop``: set (e.g. by a signal
    handler) to stop every stream. A stopped stream writes every frame read before the stop and is
    closed as complete. Faults go to their policies (:mod:`pipeline.driver.recovery`); an exception
    inside a replica ends that stream only.
    """

    def __init__(self, sources: list[Source], setup: StreamSetup, pool: ActorPool, report: RunReport,
                 reporter: Reporter, deadline: float | None = None, stop: threading.Event | None = None) -> None:
        self.setup, self.pool, self.report, self.reporter = setup, pool, report, reporter
        self.writers = pool.writers
        self.dispatcher = Dispatcher(ReplicaPool(len(pool.replicas), setup.settings.in_flight_per_replica))
        self.decode_refs: dict[Any, tuple[str, Any, int]] = {}  # header ref -> (stream, batch ref, epoch)
        self.score_refs: dict[Any, tuple[Decoded, int, Any, Any]] = {}  # who-scored-it ref -> (batch, slot, result, actor)
        self.deadline, self.stop = deadline, stop or threading.Event()
        self.stopping = False
        self.live_run = any(source.is_live for source in sources)
        faults = report.faults
        self.replica_recovery, self.batch_retry, self.redecode = ReplicaRecovery(faults), BatchRetry(faults), Redecode(faults)
        self.takeover = WriterTakeover(faults, possible=pool.writers_replaceable and not self.live_run)
        self.events = EventRelay(self.writers, report, reporter, self.live_run, setup.events)
        self.rows = RowSender(self.writers, report, reporter, 2 * self.dispatcher.pool.capacity,
                              (setup.arrays, setup.settings.batch_size), setup.settings.flush_s, setup.view, setup.events)
        self.cameras = CameraWatch(self.rows)  # which camera states go on to the writers
        self.opener = StreamOpener(sources, setup, pool, self.dispatcher, self.rows, report, reporter)
        known = all(s.frame_count for s in sources) and not self.live_run
        reporter.start(sum(s.frame_count for s in sources) if known else None, self.live_run)

    def run(self) -> None:
        """Raises AnomstreamError (one line) when a writer is lost for good: what is on disk is
        whole (a stream's ``written`` mark counts finished batches only) and ``--resume`` goes on."""
        try:
            self._loop_taking_over()
        except RayError as failure:  # the replicas' and decoders' faults are handled where they happen
            self.reporter.close()
            self.writers.flush_all()  # the writers that still answer keep what they received
            if self.score_refs:  # a replica killed while it scores makes Ray print a retry notice
                ray.wait(list(self.score_refs), num_returns=len(self.score_refs), timeout=SETTLE_S)
            raise _writing_failed(self.report.store, failure, self.live_run) from None
        except BaseException:
            self._end()
            raise
        self._end()

    def _end(self) -> None:
        """After the last stream, an interruption or an error: every frame already written is kept,
        open streams are closed as interrupted, the events so far shown."""
        self.reporter.close()
        for stream_id in list(self.dispatcher.streams):
            self._close(stream_id, "interrupted")
        self.events.relay(final=True)

    def _loop_taking_over(self) -> None:
        """The loop, with new writers taking over when a writer (or a result on its way to one) is lost."""
        while True:
            try:
                self._loop()
                return
            except RayError as failure:  # replicas' and decoders' faults are handled where they happen
                if not (_writer_lost(failure) and self.takeover.allowed()):
                    raise
                self._take_over_writers(failure)

    def _loop(self) -> None:
        self.opener.open_waiting()
        while self.dispatcher.streams or self.opener.waiting:
            self._stop_if_asked()
            self._request_batches()
            self._dispatch()
            pending = list(self.decode_refs) + list(self.score_refs)
            if not pending:
                self._settle()
                continue
            for ref in ray.wait(pending, num_returns=1, timeout=WAIT_S)[0]:
                if ref in self.decode_refs:
                    self._on_decoded(ref)
                else:
                    self._on_scored(ref)
            self.opener.open_waiting()
            self._show_progress()

    def _show_progress(self) -> None:
        if self.reporter.table_due():
            self.reporter.table(self.writers.accounting())
        self.events.relay()
        self.rows.flush_due()
        self.reporter.watch_replicas(self.pool.replicas, sum(self.report.faults.counts.values()))

    def _stop_if_asked(self) -> None:
        due = self.deadline is not None and time.monotonic() >= self.deadline
        if self.stopping or not (due or self.stop.is_set()):
            return
        self.stopping = True
        self.opener.waiting.clear()
        for stream in self.dispatcher.streams.values():
            stream.stopping = True
            stream.decoder.stop.remote()

    def _request_batches(self) -> bool:
        """Streams that want a batch ask their decoder; whether any did."""
        asking = self.dispatcher.to_request()
        for stream_id in asking:
            stream = self.dispatcher.streams[stream_id]
            header_ref, batch_ref = stream.decoder.next_batch.remote()
            self.decode_refs[header_ref] = (stream_id, batch_ref, stream.epoch)
        return bool(asking)

    def _dispatch(self) -> None:
        for assignment in self.dispatcher.assign(time.time(), self.setup.max_latency_s):
            if assignment.replica is None:
                self._flush(assignment.item.stream_id)  # dropped: its rows go to the writer unscored
            else:
                self._send_to(assignment.item, assignment.replica)

    def send(self, item: Decoded) -> None:
        """``item`` to the least loaded replica (again: its replica was lost)."""
        self._send_to(item, self.dispatcher.pool.acquire())

    def _send_to(self, item: Decoded, replica: int) -> None:
        actor = self.pool.replicas[replica].actor
        who_ref, result_ref = actor.score.remote(self.pool.model_call, item.ref)
        self.score_refs[who_ref] = (item, replica, result_ref, actor)

    def _on_decoded(self, ref: Any) -> None:
        stream_id, batch_ref, epoch = self.decode_refs.pop(ref)
        stream = self.dispatcher.streams.get(stream_id)
        if stream is None or epoch != stream.epoch:
            return  # asked of a decoder given up on
        stream.decode_pending = False
        if stream.cut is not None:
            return  # the stream ended with an error: nothing more of it is written
        try:
            header = ray.get(ref)
        except RayTaskError as failure:  # a decoder bug or a library error: this stream only
            cause = failure.cause if isinstance(failure.cause, Exception) else failure
            reason = f"{self.report.streams[stream_id].source}: decoding failed ({type(cause).__name__}: {cause})"
            header = EndOfStream(stream_id, 0, reason.splitlines()[0])
        except RayActorError as failure:
            self._stream_lost(stream_id, f"decoder of stream {stream_id} lost ({first_line(failure)})")
            return
        self.rows.add_gaps(stream_id, header.gaps)
        self.cameras.seen(stream_id, header.camera)
        if self.dispatcher.accept(stream_id, header, batch_ref):
            self._flush(stream_id)

    def _on_scored(self, ref: Any) -> None:
        item, replica, result_ref, actor = self.score_refs.pop(ref)
        self.dispatcher.pool.release(replica)
        source = self.report.streams[item.stream_id].source
        try:
            who = ray.get(ref)
        except RayActorError as failure:  # Ray gave the replica up: a new one, and the batch goes out again
            slot = self.pool.replicas[replica]
            if actor is slot.actor:  # its other batches fail too: one new replica
                self.replica_recovery.lost(replica, slot, first_line(failure), self)
            if self._counts(item):
                self.batch_retry.lost(item, source, self)
            return
        except (ObjectLostError, RayTaskError) as failure:
            if self._counts(item):
                cause = failure.cause if isinstance(failure, RayTaskError) and isinstance(failure.cause, Exception) \
                    else failure
                if isinstance(cause, ObjectLostError):  # the decoded batch was lost with its node
                    self._stream_lost(item.stream_id, f"a decoded batch of stream {item.stream_id} was lost "
                                                      f"({first_line(cause)})")
                else:
                    model_failed(item, source, cause, self)
            return
        self.replica_recovery.answered(replica, self.pool.replicas[replica], who["pid"], who["node"])
        if self._counts(item):
            self.dispatcher.scored(item, result_ref, self.rows.shown(item))
            self._flush(item.stream_id)

    def _counts(self, item: Decoded) -> bool:
        """Whether an answer about ``item`` still counts (:meth:`Dispatcher.answer_counts`)."""
        if self.dispatcher.answer_counts(item):
            return True
        if item.stream_id in self.dispatcher.streams:
            self._flush(item.stream_id)  # the stream may be finished now
        return False

    def _stream_lost(self, stream_id: str, why: str) -> None:
        source = self.opener.opened[stream_id]
        self.redecode.lost(self.dispatcher, stream_id, source.describe(), source.is_live, why, self)

    def start_decoding(self, stream_id: str, decoder: Any, row: int) -> None:
        self.opener.start_decoding(stream_id, decoder, row)

    def replace_replica(self, index: int) -> None:
        self.pool.replace_replica(index)
        self.reporter.replica_replaced(index)

    def replace_decoder(self, stream_id: str) -> Any:
        return self.pool.replace_decoder(self.dispatcher.streams[stream_id].decoder)

    def end_stream(self, stream_id: str, reason: str, at: Decoded | None = None) -> None:
        self.dispatcher.streams[stream_id].decoder.stop.remote()  # a live reader stops reading
        self.dispatcher.end_stream(stream_id, reason, at)
        self._flush(stream_id)

    def _take_over_writers(self, failure: Exception) -> None:
        """New writers reopen the store; every open stream goes on from its ``written`` mark (the
        rows sent to the lost writers after it are decoded, scored and sent again)."""
        self.events.hold()  # writers still alive (a lost result) hand over what they detected
        self.pool.replace_writers()
        self.rows.forget_in_flight()
        self.opener.forget_asked()
        written = {}
        for stream_id in self.dispatcher.streams:
            stored = self.rows.stored(stream_id)
            written[stream_id] = stored.written if stored is not None else 0
            self.opener.open_in_store(stream_id)
        for step in self.takeover.rewind(self.dispatcher, written, self.setup.settings.batch_size):
            self.report.streams[step.stream_id].frames -= step.resent
            self.reporter.advance(-step.resent)
            stream = self.dispatcher.streams[step.stream_id]
            if step.restart:
                self.opener.start_decoding(step.stream_id, stream.decoder, step.row)
            else:  # it had ended with an error: it stays ended
                self._close(step.stream_id, stream.ended.error, list(stream.ended.warnings))
        self.takeover.noted(len(self.writers.actors), len(self.dispatcher.streams), first_line(failure))

    def _flush(self, stream_id: str) -> None:
        """Send the stream's results that are next in frame order to its writer; close it when done."""
        stream = self.dispatcher.streams[stream_id]
        self.rows.send_ready(stream_id, stream)
        if stream.finished:
            too_short = self.dispatcher.too_short(stream_id, self.report.streams[stream_id].source,
                                                  self.setup.shape.window_length)
            self._close(stream_id, stream.ended.error, [*stream.ended.warnings, *too_short])

    def _close(self, stream_id: str, error: str | None, warnings: list[str] | None = None) -> None:
        stopped = self.dispatcher.streams[stream_id].stopping
        self.rows.close(stream_id, error, warnings or [], stopped)
        stream = self.dispatcher.close(stream_id)
        report = self.report.streams[stream_id]
        report.error, report.warnings, report.stopped = error, warnings or [], stopped
        self.pool.release_decoder(stream.decoder)

    def _settle(self) -> None:
        """Nothing in flight: finish what can be finished, start what waits, ask the decoders
        again (a batch just dropped frees its stream to ask), or fail loudly."""
        state = (tuple(self.dispatcher.streams), len(self.opener.waiting))
        for stream_id in list(self.dispatcher.streams):
            self._flush(stream_id)
        self.opener.open_waiting()
        if (tuple(self.dispatcher.streams), len(self.opener.waiting)) == state and not self._request_batches():
            raise RuntimeError(f"scoring stalled: streams {sorted(self.dispatcher.streams)} wait on nothing")


def _writing_failed(store: Any, failure: RayError, live: bool) -> AnomstreamError:
    """The one-line error of a run whose writer is lost for good, the cause first (never Ray's
    wrapper text), with what to do next."""
    then = "start the run again" if live else "run again with --resume"
    if isinstance(failure, AnomstreamError):  # the store's own one-line error, raised in the writer
        line = first_line(getattr(failure, "cause", None) or failure, limit=None)
        return StoreError(f"{line}: {then}" if line.endswith("what is written is kept") else line)
    if isinstance(failure, RayActorError):
        return StoreError(f"{store}: the writer process was lost ({first_line(failure)}); what is written is kept: {then}")
    return StoreError(f"{store}: writing failed ({cause_line(failure)}); what is written is kept: {then}")


def _writer_lost(failure: RayError) -> bool:
    """The writer's process is gone, or a result was lost on its way to it (not an error raised
    by the writer's own code, which a new writer would meet again)."""
    if isinstance(failure, AnomstreamError):
        return False
    cause = failure.cause if isinstance(failure, RayTaskError) else failure
    return isinstance(failure, RayActorError) or isinstance(cause, ObjectLostError)
