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
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from pipeline.config import ScoreSection
from pipeline.driver.report import RunReport, StreamReport, event_line, live_table
from pipeline.driver.schedule import Decoded, ReplicaPool, StreamState, choose
from pipeline.sources.base import Source
from pipeline.stream.live import LiveOptions
from pipeline.stream.windows import BatchHeader, EndOfStream

WAIT_S = 0.25  # longest the loop waits on actors before it looks at the clock (duration, stop, table)
TABLE_EVERY_S = 5.0
EVENTS_EVERY_S = 1.0  # a live run prints event starts / ends at most this late
VIEW_FRAME_S = 0.4  # live view: a stream's shown frame is renewed at most this often


def _same_source(stored: str, current: str) -> bool:
    """Whether a stream in the store came from this input (earlier stores kept paths as typed)."""
    return stored == current or Path(stored).absolute() == Path(current)


def _stream_attrs(source: Source, live: LiveOptions) -> dict[str, Any]:
    attrs: dict[str, Any] = {"source": source.describe(), "fps": source.fps, "live": source.is_live}
    if source.is_live:
        attrs["maps_every"] = live.maps_every
    items = source.items()
    if items is not None:
        attrs["items"] = items  # still images: frame_index -> file
    return attrs


class ScoringLoop:
    """One run's streams from their decoders through the replicas to the writer.

    ``live``: how live sources are read (policy, max latency); ``deadline``: time.monotonic() at
    which every stream is stopped; ``stop``: set (e.g. by a signal handler) to stop every stream.
    A stopped stream writes every frame read before the stop and is closed as complete.
    """

    def __init__(self, sources: list[Source], model: Any, arrays: dict, settings: ScoreSection, writer: Any,
                 replicas: list, decoders: list, report: RunReport, progress: bool, live: LiveOptions,
                 deadline: float | None = None, stop: threading.Event | None = None, view: bool = False,
                 events: bool = False) -> None:
        self.model, self.arrays, self.settings = model, arrays, settings
        self.writer, self.replicas, self.report, self.live = writer, replicas, report, live
        self.free_decoders = list(decoders)  # at most one source per decoder at a time
        self.pool = ReplicaPool(settings.replicas, settings.in_flight_per_replica)
        self.sources = deque(sources)  # not opened yet
        self.streams: dict[str, StreamState] = {}
        self.decoded: deque[Decoded] = deque()  # waiting for a replica
        self.decode_refs: dict[Any, tuple[str, Any]] = {}  # header ref -> (stream, batch ref)
        self.score_refs: dict[Any, tuple[str, BatchHeader, int, Any]] = {}  # result -> (stream, header, replica, batch)
        self.write_refs: deque = deque()
        self.requests = 0
        self.deadline, self.stop = deadline, stop or threading.Event()
        self.stopping = False
        self.live_run = any(source.is_live for source in sources)
        self.progress, self.view, self.events = progress, view, events
        self.events_due = time.monotonic() + EVENTS_EVERY_S
        self.view_due: dict[str, float] = {}  # stream -> when its next batch goes to the writer for the view
        self.table_due = time.monotonic() + TABLE_EVERY_S
        known = all(s.frame_count for s in sources) and not self.live_run
        self.bar = tqdm(total=sum(s.frame_count for s in sources) if known else None, desc="scoring",
                        unit="frame", disable=not progress or self.live_run)

    def run(self) -> None:
        try:
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
        finally:
            self.bar.close()
            self._close_unfinished()
            self._print_events(final=True)

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
            self.report.streams[source.stream_id] = stream_report = StreamReport(source.describe())
            stored = ray.get(self.writer.stored_stream.remote(source.stream_id))
            if stored is not None and stored.source is not None and not _same_source(stored.source, source.describe()):
                stream_report.error = (f"{source.describe()}: the store's stream {source.stream_id!r} was scored from "
                                       f"{stored.source}; score into another store, or --overwrite")
                continue  # what the store holds stays as it is
            if stored is not None and stored.complete:
                stream_report.skipped = True
                self.bar.update(source.frame_count or 0)
                continue
            done = stored.written if stored is not None else 0
            ray.get(self.writer.open_stream.remote(source.stream_id, self.arrays, self.settings.batch_size,
                                                   source.frame_count, _stream_attrs(source, self.live)))
            self.bar.update(done)
            stream_report.frames = done
            decoder = self.free_decoders.pop()
            decoder.open.remote(source, self.model.window_length, self.settings.batch_size, self.model.image_size,
                                self.model.channels, done, self.live if source.is_live else None)
            policy = self.live.policy_for(source) if source.is_live else "every"
            self.streams[source.stream_id] = StreamState(decoder, done // self.settings.batch_size, done, policy)

    def _request_batches(self) -> None:
        latest = [s for s in self.streams.values() if s.policy == "latest"]
        free = self.pool.idle - sum(s.decode_pending + s.queued for s in latest)  # replicas no latest batch claims
        for stream_id, stream in sorted(self.streams.items(), key=lambda item: item[1].last_request):
            if stream.wants_batch(len(self.decoded), self.pool.capacity, replica_free=free > 0):
                header_ref, batch_ref = stream.decoder.next_batch.remote()
                self.decode_refs[header_ref] = (stream_id, batch_ref)
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
            replica = self.pool.acquire()
            stream.scoring += 1
            self.score_refs[self.replicas[replica].score.remote(item.ref)] = (item.stream_id, item.header, replica,
                                                                               item.ref)

    def _on_decoded(self, ref: Any) -> None:
        stream_id, batch_ref = self.decode_refs.pop(ref)
        stream = self.streams[stream_id]
        stream.decode_pending = False
        try:
            header = ray.get(ref)
        except ray.exceptions.RayTaskError as failure:  # a decoder bug or a library error: this stream only
            cause = failure.cause if isinstance(failure.cause, Exception) else failure
            reason = f"{self.report.streams[stream_id].source}: decoding failed ({type(cause).__name__}: {cause})"
            header = EndOfStream(stream_id, 0, reason.splitlines()[0])
        if header.gaps:
            self.write_refs.append(self.writer.add_gaps.remote(stream_id, [gap.to_dict() for gap in header.gaps]))
        if isinstance(header, EndOfStream):
            stream.ended = header
            self._flush(stream_id)
        elif header.size and not header.scorable:  # warm-up, gap or frozen frames only: straight to the writer
            stream.to_write[header.sequence] = (header.size, batch_ref, "unscored")
            self._flush(stream_id)
        elif header.size:
            stream.queued += 1
            self.decoded.append(Decoded(stream_id, header, batch_ref))

    def _on_scored(self, ref: Any) -> None:
        stream_id, header, replica, batch_ref = self.score_refs.pop(ref)
        self.pool.release(replica)
        stream = self.streams[stream_id]
        stream.scoring -= 1
        shown = batch_ref if self.events else None  # event snapshots need every scored batch
        if self.view and time.monotonic() >= self.view_due.get(stream_id, 0.0):
            shown, self.view_due[stream_id] = batch_ref, time.monotonic() + VIEW_FRAME_S
        stream.to_write[header.sequence] = (header.size, (ref, shown), "scored")
        self._flush(stream_id)

    def _flush(self, stream_id: str) -> None:
        """Send the stream's results that are next in frame order to the writer; close it when done."""
        stream = self.streams[stream_id]
        for row, size, ref, how in stream.take_writable():
            if how == "scored":
                result_ref, shown_batch_ref = ref
                self.write_refs.append(self.writer.write.remote(stream_id, row, result_ref, shown_batch_ref))
            else:
                self.write_refs.append(self.writer.write_unscored.remote(stream_id, row, ref, how == "dropped"))
            self.report.streams[stream_id].frames += size
            self.bar.update(size)
        while len(self.write_refs) > 2 * self.pool.capacity:
            ray.get(self.write_refs.popleft())
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
            ray.get(self.write_refs.popleft())
        stream = self.streams.pop(stream_id)
        ray.get(self.writer.close_stream.remote(stream_id, error, warnings or [], stream.stopping))
        report = self.report.streams[stream_id]
        report.error, report.warnings, report.stopped = error, warnings or [], stream.stopping
        self.free_decoders.append(stream.decoder)

    def _print_table(self) -> None:
        if not (self.live_run and self.progress) or time.monotonic() < self.table_due:
            return
        self.table_due = time.monotonic() + TABLE_EVERY_S
        print(live_table(ray.get(self.writer.accounting.remote())), file=sys.stderr, flush=True)

    def _print_events(self, final: bool = False) -> None:
        """Event starts and ends, one line each (live runs print as they come, others at the end)."""
        if not self.events or not (final or (self.live_run and time.monotonic() >= self.events_due)):
            return
        self.events_due = time.monotonic() + EVENTS_EVERY_S
        for message in ray.get(self.writer.take_events.remote()):
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

    def _close_unfinished(self) -> None:
        """After an interruption or error: keep every frame already written, mark the streams."""
        for stream_id in list(self.streams):
            self._close(stream_id, "interrupted")
