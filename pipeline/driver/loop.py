"""The driver's event loop on Ray: keeps replicas busy, decoders just ahead, writes in frame order.

The loop only moves object references: a decoded batch goes from a decode actor straight to a
replica (or to the writer when nothing in it is to be scored or it is dropped), and a result from a
replica straight to the writer. The choices are made by :mod:`pipeline.driver.schedule`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayError, RayTaskError
from tqdm import tqdm

from pipeline.config import ScoreSection
from pipeline.driver.busy import NodeBusy
from pipeline.driver.report import RunReport, StreamReport, event_line, live_table
from pipeline.driver.resume import resume_refusal
from pipeline.driver.schedule import Decoded, ReplicaPool, StreamState, choose
from pipeline.driver.writers import WriterSet
from pipeline.errors import AnomstreamError, first_line
from pipeline.sources.base import Source
from pipeline.stream.live import LiveOptions
from pipeline.stream.windows import EndOfStream

WAIT_S = 0.25  # longest the loop waits on actors before it looks at the clock (duration, stop, table)
TABLE_EVERY_S = 5.0
EVENTS_EVERY_S = 1.0  # a live run prints event starts / ends at most this late
VIEW_FRAME_S = 0.4  # live view: a stream's shown frame is renewed at most this often
MAX_REDECODES = 3  # a stream decoded again more often than this after faults ends with an error
MAX_REPLACEMENTS_PER_REPLICA = 3  # beyond Ray's own restarts; then the run ends with an error
MAX_BATCH_ATTEMPTS = 3  # replicas lost while holding one batch before its stream ends with an error
MAX_WRITER_TAKEOVERS = 3  # new writers started in one run; then the run ends, telling to --resume


def _stream_attrs(source: Source, live: LiveOptions, fingerprint: dict[str, int] | None, writer: int) -> dict[str, Any]:
    attrs: dict[str, Any] = {"source": source.describe(), "fps": source.fps, "live": source.is_live,
                             "source_fingerprint": fingerprint, "writer": writer}
    if source.is_live:
        attrs["maps_every"] = live.maps_every
    items = source.items()
    if items is not None:
        attrs["items"] = items  # still images: frame_index -> file
    return attrs


@dataclass
class Workers:
    """A run's actors: ``replicas`` (replaced in place when Ray gives one up), ``decoders`` (a
    pool), ``model``: ``[ref]`` to the model's contents in the object store, sent with every
    replica call; ``new_replica`` / ``new_decoder`` start one more actor; ``new_writer(index)``
    starts writer ``index`` again on the run's store (resume mode) and gives (it, its pid); None: a
    lost writer ends the run."""

    model: list[Any]
    new_replica: Callable[[], Any]
    new_decoder: Callable[[], Any]
    new_writer: Callable[[int], tuple[Any, int]] | None = None
    replicas: list[Any] = field(default_factory=list)
    decoders: list[Any] = field(default_factory=list)


class ScoringLoop:
    """One run's streams from their decoders through the replicas to their writers (:class:`WriterSet`).

    ``live``: how live sources are read (policy, max latency); ``deadline``: time.monotonic() at
    which every stream is stopped; ``stop``: set (e.g. by a signal handler) to stop every stream.
    A stopped stream writes every frame read before the stop and is closed as complete.

    Faults (each a line in ``report.faults``): a replica process that dies is restarted by Ray,
    which sends its batches again (the loop notes the new process); a replica Ray gives up on is
    replaced by ``new_replica()`` and its batches go to a replica again; a decoder that dies, or a
    decoded batch that is lost (its node gone), makes the stream decode again from its next
    unwritten row with ``new_decoder()``. An exception inside a replica ends that stream only. A
    writer that is lost (or a scored batch lost before it was written) is replaced, with the
    others, by ``new_writer(index)``, which reopens the store from its ``written`` marks, and every
    open stream is decoded again from there (recordings only: a live run ends, telling to start it again).
    """

    def __init__(self, sources: list[Source], model: Any, arrays: dict, settings: ScoreSection,
                 writers: WriterSet, workers: Workers, report: RunReport, progress: bool, live: LiveOptions,
                 deadline: float | None = None, stop: threading.Event | None = None, view: bool = False,
                 events: bool = False) -> None:
        self.model, self.arrays, self.settings = model, arrays, settings
        self.writers, self.workers, self.report, self.live = writers, workers, report, live
        self.replicas = workers.replicas  # replaced in place: the caller sees the replicas at the end
        self.replica_pids: list[int | None] = [None] * len(self.replicas)
        self.replica_nodes: list[str | None] = [None] * len(self.replicas)  # as their answers say
        self.node_busy = NodeBusy()
        self.replacements = [0] * len(self.replicas)  # new replicas started in each slot
        self.opened: dict[str, Source] = {}
        self.fingerprints: dict[str, dict[str, int] | None] = {}
        self.writer_takeovers = 0
        self.held_events: list[dict[str, Any]] = []  # taken from a writer replaced since
        self.free_decoders = list(workers.decoders)  # at most one source per decoder at a time
        self.pool = ReplicaPool(settings.replicas, settings.in_flight_per_replica)
        self.sources = deque(sources)  # not opened yet
        self.streams: dict[str, StreamState] = {}
        self.decoded: deque[Decoded] = deque()  # waiting for a replica
        self.decode_refs: dict[Any, tuple[str, Any, int]] = {}  # header ref -> (stream, batch ref, epoch)
        self.score_refs: dict[Any, tuple[Decoded, int, Any, Any]] = {}  # who-scored-it ref -> (batch, replica, result, actor)
        self.write_refs: deque = deque()
        self.requests = 0
        self.deadline, self.stop = deadline, stop or threading.Event()
        self.stopping = False
        self.writer_lost = False
        self.live_run = any(source.is_live for source in sources)
        self.progress, self.view, self.events = progress, view, events
        self.events_due = time.monotonic() + EVENTS_EVERY_S
        self.view_due: dict[str, float] = {}  # stream -> when its next batch goes to the writer for the view
        self.table_due = time.monotonic() + TABLE_EVERY_S
        self.rows_due = time.monotonic() + settings.flush_s
        known = all(s.frame_count for s in sources) and not self.live_run
        # shown from its first update after 0.5 s: by then the frames a resume skips have left its total
        self.bar = tqdm(total=sum(s.frame_count for s in sources) if known else None, desc="scoring",
                        unit="frame", disable=not progress or self.live_run, delay=0.5)

    def run(self) -> None:
        """Raises AnomstreamError (one line) when the writer is lost: what is on disk is whole (a
        stream's ``written`` mark counts finished batches only) and ``--resume`` goes on from it."""
        try:
            self._loop_taking_over()
        except RayActorError as failure:  # the replicas' and decoders' are handled where they happen
            self.writer_lost = True
            raise AnomstreamError(f"{self.report.store}: the writer process was lost ({first_line(failure)}); "
                                  f"what is written is kept: run again with --resume") from None
        except RayError as failure:  # e.g. a scored batch lost with its node before the writer read it
            self.writer_lost = True
            if isinstance(failure, AnomstreamError):
                raise  # the store's own one-line error, raised in the writer
            raise AnomstreamError(f"{self.report.store}: writing failed ({type(failure).__name__}: "
                                  f"{first_line(failure)}); what is written is kept: run again with --resume") from None
        finally:
            self.bar.close()
            if not self.writer_lost:
                self._close_unfinished()
                self._print_events(final=True)
            else:
                self.writers.flush_all()  # the writers that still answer keep what they received

    def _loop_taking_over(self) -> None:
        """The loop, with a new writer taking over when the writer (or a result on its way to it) is lost."""
        while True:
            try:
                self._loop()
                return
            except RayError as failure:  # replicas' and decoders' faults are handled where they happen
                if not (_writer_lost(failure) and self._can_take_over()):
                    raise
                self._take_over_writer(failure)

    def _loop(self) -> None:
        self._open_streams()
        while self.streams or self.sources:
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
            self._open_streams()
            self._print_table()
            self._print_events()
            self._flush_rows_due()
            self._show_busy()

    def _stop_if_asked(self) -> None:
        due = self.deadline is not None and time.monotonic() >= self.deadline
        if self.stopping or not (due or self.stop.is_set()):
            return
        self.stopping = True
        self.sources.clear()
        for stream in self.streams.values():
            stream.stopping = True
            stream.decoder.stop.remote()

    def _open_streams(self) -> None:
        while self.sources and self.free_decoders:
            source = self.sources.popleft()
            try:
                self._open_stream(source)
            except RayError:
                self.sources.appendleft(source)  # the writer was lost: opened again by the next one
                raise

    def _open_stream(self, source: Source) -> None:
        """Open ``source``'s stream in the store and start decoding it, or note why not."""
        self.report.streams[source.stream_id] = stream_report = StreamReport(source.describe())
        stored = ray.get(self.writers.root.stored_stream.remote(source.stream_id))
        stream_report.stored = stored.written if stored is not None else 0
        fingerprint = source.fingerprint()  # a stat of every file of the input: once
        stream_report.error = resume_refusal(stored, source, fingerprint)
        if stream_report.error:
            return  # what the store holds stays as it is
        if stored is not None and stored.complete:
            stream_report.skipped = True
            self._not_this_run(source.frame_count or 0)
            return
        done = stored.written if stored is not None else 0
        writer = self.writers.assign(source.stream_id)
        ray.get(writer.open_stream.remote(source.stream_id, self.arrays, self.settings.batch_size, source.frame_count,
                                          _stream_attrs(source, self.live, fingerprint, self.writers.index(source.stream_id))))
        self._not_this_run(done)
        decoder = self.free_decoders.pop()
        self.opened[source.stream_id] = source
        self.fingerprints[source.stream_id] = fingerprint
        self._start_decoding(source.stream_id, decoder, done)
        policy = self.live.policy_for(source) if source.is_live else "every"
        self.streams[source.stream_id] = StreamState(decoder, done // self.settings.batch_size, done, policy)

    def _not_this_run(self, frames: int) -> None:
        """Frames the store already holds leave the progress bar's total (its rate and ETA are this run's)."""
        if self.bar.total:
            self.bar.total = max(0, self.bar.total - frames)

    def _start_decoding(self, stream_id: str, decoder: Any, done: int) -> None:
        """``decoder`` opens the stream's source; its first batch starts at row ``done``."""
        source = self.opened[stream_id]
        decoder.open.remote(source, self.model.window_length, self.settings.batch_size, self.model.image_size,
                            self.model.channels, done, self.live if source.is_live else None)

    def _request_batches(self) -> None:
        latest = [s for s in self.streams.values() if s.policy == "latest"]
        free = self.pool.idle - sum(s.decode_pending + s.queued for s in latest)  # replicas no latest batch claims
        for stream_id, stream in sorted(self.streams.items(), key=lambda item: item[1].last_request):
            if stream.wants_batch(len(self.decoded), self.pool.capacity, replica_free=free > 0):
                header_ref, batch_ref = stream.decoder.next_batch.remote()
                self.decode_refs[header_ref] = (stream_id, batch_ref, stream.epoch)
                stream.decode_pending = True
                self.requests += 1
                stream.last_request = self.requests
                free -= stream.policy == "latest"

    def _dispatch(self) -> None:
        max_latency_s = None if self.live.max_latency_ms is None else self.live.max_latency_ms / 1000
        while self.pool.has_room and self.decoded:
            item, drop = choose(self.decoded, self.streams, time.time(), max_latency_s)
            stream = self.streams[item.stream_id]
            stream.queued -= 1
            if drop:
                stream.to_write[item.header.sequence] = (item.header.size, item.ref, "dropped")
                self._flush(item.stream_id)
                continue
            stream.scoring += 1
            self._send(item)

    def _send(self, item: Decoded) -> None:
        replica = self.pool.acquire()
        actor = self.replicas[replica]
        who_ref, result_ref = actor.score.remote(self.workers.model, item.ref)
        self.score_refs[who_ref] = (item, replica, result_ref, actor)

    def _on_decoded(self, ref: Any) -> None:
        stream_id, batch_ref, epoch = self.decode_refs.pop(ref)
        stream = self.streams.get(stream_id)
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
            self._redecode(stream_id, f"decoder of stream {stream_id} lost ({first_line(failure)})")
            return
        if header.gaps:
            self.write_refs.append(self.writers.of(stream_id).add_gaps.remote(stream_id, [gap.to_dict() for gap in header.gaps]))
        if isinstance(header, EndOfStream):
            stream.ended = header
            self._flush(stream_id)
        elif header.size and not header.scorable:  # warm-up, gap or frozen frames only: straight to the writer
            stream.to_write[header.sequence] = (header.size, batch_ref, "unscored")
            self._flush(stream_id)
        elif header.size:
            stream.queued += 1
            self.decoded.append(Decoded(stream_id, header, batch_ref, stream.epoch))

    def _on_scored(self, ref: Any) -> None:
        item, replica, result_ref, actor = self.score_refs.pop(ref)
        self.pool.release(replica)
        try:
            who = ray.get(ref)
        except RayActorError as failure:  # Ray gave the replica up: a new one, and the batch goes out again
            if actor is self.replicas[replica]:  # its other batches fail too: one new replica
                self._replace_replica(replica, failure)
            if self._current(item):
                self._resend(item)
            return
        except (ObjectLostError, RayTaskError) as failure:
            if self._current(item):
                self._scoring_failed(item, failure)
            return
        self._note_process(replica, who)
        if not self._current(item):
            return
        stream_id, header = item.stream_id, item.header
        stream = self.streams[stream_id]
        stream.scoring -= 1
        shown = item.ref if self.events else None  # event snapshots need every scored batch
        if self.view and time.monotonic() >= self.view_due.get(stream_id, 0.0):
            shown, self.view_due[stream_id] = item.ref, time.monotonic() + VIEW_FRAME_S
        stream.to_write[header.sequence] = (header.size, (result_ref, shown), "scored")
        self._flush(stream_id)

    def _current(self, item: Decoded) -> bool:
        """Whether an answer about ``item`` still counts: its stream was not decoded again since,
        nor ended before it (an answer that no longer counts is dropped; one ended past is also
        taken off the stream's count in flight)."""
        stream = self.streams.get(item.stream_id)
        if stream is None or item.epoch != stream.epoch:
            return False  # the counts were reset when the stream was decoded again
        if not stream.keeps(item.header.sequence):
            stream.scoring -= 1
            self._flush(item.stream_id)
            return False
        return True

    def _resend(self, item: Decoded) -> None:
        item.attempts += 1
        if item.attempts >= MAX_BATCH_ATTEMPTS:
            header = item.header
            self._fail(item.stream_id, f"{self.report.streams[item.stream_id].source}: {item.attempts} replicas lost "
                                       f"while scoring frames {header.start}-{header.start + header.size - 1}", item)
        else:
            self.faults.note("batch_resent")
            self._send(item)

    def _scoring_failed(self, item: Decoded, failure: Exception) -> None:
        """The batch is lost with its node (decode the stream again), or the model raised (the
        stream ends there, the others go on)."""
        cause = failure.cause if isinstance(failure, RayTaskError) and isinstance(failure.cause, Exception) else failure
        if isinstance(cause, ObjectLostError):
            self._redecode(item.stream_id, f"a decoded batch of stream {item.stream_id} was lost ({first_line(cause)})")
        else:
            self._fail(item.stream_id, f"{self.report.streams[item.stream_id].source}: scoring failed at frame "
                                       f"{item.header.start} ({type(cause).__name__}: {first_line(cause)})", item)

    def _note_process(self, replica: int, who: dict[str, Any]) -> None:
        """A replica answering from another process than before was restarted by Ray."""
        known, self.replica_pids[replica] = self.replica_pids[replica], who["pid"]
        self.replica_nodes[replica] = who["node"]
        if known is not None and known != who["pid"]:
            self.faults.note("replica_restarted", f"replica {replica} process {known} lost; Ray restarted it as "
                                                  f"process {who['pid']} and sent its batches again")

    def _replace_replica(self, replica: int, failure: Exception) -> None:
        if self.replacements[replica] >= MAX_REPLACEMENTS_PER_REPLICA:
            raise AnomstreamError(f"replica {replica} keeps being lost ({self.replacements[replica]} replaced; "
                                  f"last: {first_line(failure)})")
        ray.kill(self.replicas[replica], no_restart=True)  # unavailable for now may still mean alive later
        self.replicas[replica], self.replica_pids[replica] = self.workers.new_replica(), None
        self.replica_nodes[replica] = None
        self.node_busy.forget(replica)
        self.replacements[replica] += 1
        self.faults.note("replica_replaced", f"replica {replica} lost for good ({first_line(failure)}); "
                                             f"a new replica takes its place")

    def _can_take_over(self) -> bool:
        return (self.workers.new_writer is not None and not self.live_run
                and self.writer_takeovers < MAX_WRITER_TAKEOVERS)

    def _take_over_writer(self, failure: Exception) -> None:
        """New writers reopen the store; every open stream goes on from its ``written`` mark (the
        rows sent to the lost writers after it are decoded, scored and sent again)."""
        self.writer_takeovers += 1
        self._collect_events()  # writers still alive (a lost result) hand over what they detected
        self.writers.replace_all(self.workers.new_writer)
        self.write_refs.clear()
        batch_size = self.settings.batch_size
        for stream_id, stream in list(self.streams.items()):
            source = self.opened[stream_id]
            stored = ray.get(self.writers.of(stream_id).stored_stream.remote(stream_id))
            written = stored.written if stored is not None else 0
            ray.get(self.writers.of(stream_id).open_stream.remote(stream_id, self.arrays, batch_size, source.frame_count,
                                                   _stream_attrs(source, self.live, self.fingerprints[stream_id],
                                                                 self.writers.index(stream_id))))
            resent = stream.next_row - written
            self.report.streams[stream_id].frames -= resent
            self.bar.update(-resent)
            self.decoded = deque(item for item in self.decoded if item.stream_id != stream_id)
            if stream.ended is not None and stream.ended.error is not None:  # it ended with an error: it stays ended
                stream.next_row, stream.queued, stream.scoring = written, 0, 0
                stream.to_write.clear()
                self._close(stream_id, stream.ended.error, list(stream.ended.warnings))
                continue
            stream.rewind(stream.decoder, row=written, sequence=written // batch_size)
            self._start_decoding(stream_id, stream.decoder, written)
        taking_over = "a new writer" if len(self.writers.actors) == 1 else f"{len(self.writers.actors)} new writers"
        self.faults.note("writer_replaced", f"writer lost ({first_line(failure)}); {taking_over} took over the store "
                                            f"and {len(self.streams)} open stream(s) go on from their written rows "
                                            f"(an event open at the loss starts again)")

    def _new_decoder(self, stream: StreamState) -> Any:
        ray.kill(stream.decoder)
        decoder = self.workers.new_decoder()
        self.workers.decoders.append(decoder)  # the run kills them all at its end
        return decoder

    def _redecode(self, stream_id: str, why: str) -> None:
        """Decode the stream again from its next unwritten row, by a new decoder. A live stream
        cannot go back: it ends there (what was written is kept)."""
        stream = self.streams[stream_id]
        source = self.opened[stream_id]
        if source.is_live or stream.rewinds >= MAX_REDECODES:
            stream.decoder = self._new_decoder(stream)
            limit = "a live stream cannot be read again" if source.is_live else \
                f"given up after {stream.rewinds} new start(s)"
            self._fail(stream_id, f"{source.describe()}: {why}; {limit}")
            return
        self.decoded = deque(item for item in self.decoded if item.stream_id != stream_id)
        row = stream.rewind(self._new_decoder(stream))
        self._start_decoding(stream_id, stream.decoder, row)
        self.faults.note("stream_redecoded", f"{why}; stream {stream_id} decoded again from row {row}")

    def _fail(self, stream_id: str, reason: str, at: Decoded | None = None) -> None:
        """End a stream with ``reason`` at batch ``at`` (None: at its next unwritten row): the
        batches before it are still written, it and the rest are dropped."""
        stream = self.streams[stream_id]
        stream.decoder.stop.remote()  # a live reader stops reading
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
        self._flush(stream_id)

    def _flush(self, stream_id: str) -> None:
        """Send the stream's results that are next in frame order to the writer; close it when done."""
        stream = self.streams[stream_id]
        for row, size, ref, how in stream.take_writable():
            if how == "scored":
                result_ref, shown_batch_ref = ref
                self.write_refs.append(self.writers.of(stream_id).write.remote(stream_id, row, result_ref, shown_batch_ref))
            else:
                self.write_refs.append(self.writers.of(stream_id).write_unscored.remote(stream_id, row, ref, how == "dropped"))
            self.report.streams[stream_id].frames += size
            self.bar.update(size)
        while len(self.write_refs) > 2 * self.pool.capacity:
            ray.get(self.write_refs[0])
            self.write_refs.popleft()
        if stream.finished:
            self._close(stream_id, stream.ended.error, [*stream.ended.warnings, *self._too_short(stream_id)])

    def _too_short(self, stream_id: str) -> list[str]:
        """A warning for a stream that ended cleanly before one full window (it has no score), or
        that was stopped before its source sent a frame (a camera that never came up)."""
        stream, needed = self.streams[stream_id], self.model.window_length
        frames, source = stream.ended.frames, self.report.streams[stream_id].source
        if stream.ended.error is not None or frames >= needed:
            return []
        if stream.stopping:
            return [f"{source}: no frame received before the run stopped"] if frames == 0 else []
        return [f"{source}: {frames} frame(s), fewer than the {needed} of the model's window: no frame is scored"]

    def _close(self, stream_id: str, error: str | None, warnings: list[str] | None = None) -> None:
        while self.write_refs:
            ray.get(self.write_refs[0])
            self.write_refs.popleft()
        stream = self.streams[stream_id]
        ray.get(self.writers.of(stream_id).close_stream.remote(stream_id, error, warnings or [], stream.stopping))
        self.writers.release(stream_id)
        del self.streams[stream_id]
        report = self.report.streams[stream_id]
        report.error, report.warnings, report.stopped = error, warnings or [], stream.stopping
        self.free_decoders.append(stream.decoder)

    def _print_table(self) -> None:
        if not (self.live_run and self.progress) or time.monotonic() < self.table_due:
            return
        self.table_due = time.monotonic() + TABLE_EVERY_S
        print(live_table(self.writers.accounting()), file=sys.stderr, flush=True)

    def _flush_rows_due(self) -> None:
        """Rows that waited ``flush_s`` onto disk although their stream sent nothing since (a camera
        between frames, a recording waiting on busy replicas)."""
        if self.settings.flush_s and time.monotonic() >= self.rows_due:
            self.rows_due = time.monotonic() + self.settings.flush_s
            self.write_refs.extend(self.writers.flush_due())

    def _show_busy(self) -> None:
        """Progress across the cluster: each node's replica busy share and the faults so far, on
        the progress bar (recordings) or as a line every few seconds (live runs)."""
        if not self.progress or not self.node_busy.poll(self.replicas, self.replica_nodes):
            return
        faults = sum(self.faults.counts.values())
        text = f"busy {self.node_busy.line()}" + (f"; faults {faults}" if faults else "")
        if self.live_run:
            print(f"replicas {text}", file=sys.stderr, flush=True)
        else:
            self.bar.set_postfix_str(text, refresh=False)

    def _collect_events(self) -> None:
        """The writer's event messages so far, kept for the end of a recordings run (when the
        writer answers: a lost one's are gone)."""
        if self.events and not self.live_run:
            self.held_events += self.writers.take_events(lost_ok=True)

    def _print_events(self, final: bool = False) -> None:
        """Event starts and ends, one line each (live runs print as they come, others at the end)."""
        if not self.events or not (final or (self.live_run and time.monotonic() >= self.events_due)):
            return
        self.events_due = time.monotonic() + EVENTS_EVERY_S
        news, self.held_events = [*self.held_events, *self.writers.take_events()], []
        for message in news:
            self.report.events += message["type"] == "end"
            if self.live_run and self.progress:
                print(event_line(message), file=sys.stderr, flush=True)

    def _settle(self) -> None:
        """Nothing in flight: finish what can be finished, start what waits, or fail loudly."""
        state = (tuple(self.streams), len(self.sources))
        for stream_id in list(self.streams):
            self._flush(stream_id)
        self._open_streams()
        if (tuple(self.streams), len(self.sources)) == state:
            raise RuntimeError(f"scoring stalled: streams {sorted(self.streams)} wait on nothing")

    @property
    def faults(self):
        return self.report.faults

    def _close_unfinished(self) -> None:
        """After an interruption or error: keep every frame already written, mark the streams."""
        for stream_id in list(self.streams):
            self._close(stream_id, "interrupted")


def _writer_lost(failure: RayError) -> bool:
    """The writer's process is gone, or a result was lost on its way to it (not an error raised
    by the writer's own code, which a new writer would meet again)."""
    if isinstance(failure, AnomstreamError):
        return False
    cause = failure.cause if isinstance(failure, RayTaskError) else failure
    return isinstance(failure, RayActorError) or isinstance(cause, ObjectLostError)
