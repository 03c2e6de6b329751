"""Inputs waiting for a decoder become open streams: in the store, decoding, known to the dispatcher.

:class:`StreamOpener` opens the run's inputs in order as decoders free up (a reused pool): it asks
the store what it holds of each (a resume goes on from its ``written`` mark, a complete stream is
skipped, a changed input refused), opens the stream there with its attrs, and starts its decoder.
The store is asked about the next inputs ahead of their turn, and a stream's opening in the store is
not waited for: the driver never waits in the writer's queue (behind other streams' writes and
closes) while replicas wait for batches. A run of 4 Ped2 clips on 2 replicas began scoring 167 ms
after its start when each input waited for its writer (3 opens of ~50 ms), ~40 ms after.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Any

from ray.exceptions import RayError

from ..config import ScoreSection
from ..sources.base import Source
from ..stream.live import LiveOptions
from ..stream.windows import WindowShape
from .dispatch import Dispatcher
from .report import RunReport, StreamReport
from .reporter import Reporter
from .resume import resume_refusal
from .schedule import StreamState
from .writing import RowSender


@dataclass(frozen=True)
class StreamSetup:
    """What every stream of a run is opened with: the model's window ``shape``, the store's
    ``arrays`` (:func:`pipeline.store.result_arrays`), the score ``settings`` (batch size, batches in
    flight per replica, flush interval), how live sources are read (``live``), whether the writers
    keep frames for the live ``view`` and snapshots for ``events``."""

    shape: WindowShape
    arrays: dict[str, Any]
    settings: ScoreSection
    live: LiveOptions
    view: bool = False
    events: bool = False

    @property
    def max_latency_s(self) -> float | None:
        """Policy ``latest``: a batch whose newest frame is older than this when a replica is free is dropped."""
        return None if self.live.max_latency_ms is None else self.live.max_latency_ms / 1000


def _stream_attrs(source: Source, live: LiveOptions, fingerprint: dict[str, int] | None, writer: int) -> dict[str, Any]:
    attrs: dict[str, Any] = {"source": source.describe(), "fps": source.fps, "live": source.is_live,
                             "source_fingerprint": fingerprint, "writer": writer}
    if source.is_live:
        own = source.settings
        attrs["maps_every"] = live.maps_every if own.keep_maps is None else own.keep_maps
        if own.threshold is not None:  # the stream's own event threshold (a cameras file)
            attrs["event_rule"] = {"threshold": own.threshold, "low_threshold": own.low_threshold}
    if not source.scene_checked:
        attrs["scene_check"] = False
    items = source.items()
    if items is not None:
        attrs["items"] = items  # still images: frame_index -> file
    return attrs


ASK_AHEAD = 2  # inputs beyond those a free decoder takes now whose stored state is asked in advance


class StreamOpener:
    """``waiting``: inputs not opened yet, in order; ``opened``: each open (or once opened) stream's
    source, ``fingerprints`` its files when it opened (:meth:`Source.fingerprint`); ``asked``: what
    the store holds of the next waiting inputs, asked of the writers (stream id -> reference)."""

    def __init__(self, sources: list[Source], setup: StreamSetup, pool: Any, dispatcher: Dispatcher,
                 rows: RowSender, report: RunReport, reporter: Reporter) -> None:
        self.setup, self.pool, self.dispatcher, self.rows = setup, pool, dispatcher, rows
        self.report, self.reporter = report, reporter
        self.waiting = deque(sources)
        self.opened: dict[str, Source] = {}
        self.fingerprints: dict[str, dict[str, int] | None] = {}
        self.asked: dict[str, Any] = {}

    def open_waiting(self) -> None:
        """Open waiting inputs while a decoder is free; ask the store about the next ones."""
        self._ask_ahead()
        while self.waiting and self.pool.free_decoders:
            source = self.waiting.popleft()
            try:
                self._open(source)
            except RayError:
                self.waiting.appendleft(source)  # the writer was lost: opened again by the next one
                self.forget_asked()
                raise
        self._ask_ahead()

    def _ask_ahead(self) -> None:
        for source in islice(self.waiting, len(self.pool.free_decoders) + ASK_AHEAD):
            if source.stream_id not in self.asked:
                self.asked[source.stream_id] = self.rows.ask_stored(source.stream_id)

    def forget_asked(self) -> None:
        """Answers asked of writers that were lost or replaced are asked again."""
        self.asked.clear()

    def _open(self, source: Source) -> None:
        """Open ``source``'s stream in the store and start decoding it, or note why not."""
        stream_id = source.stream_id
        self.report.streams[stream_id] = stream_report = StreamReport(source.describe())
        stored = self.rows.stored(stream_id, self.asked.pop(stream_id, None))
        stream_report.stored = row = stored.written if stored is not None else 0
        fingerprint = source.fingerprint()  # a stat of every file of the input: once
        stream_report.error = resume_refusal(stored, source, fingerprint)
        if stream_report.error:
            return  # what the store holds stays as it is
        if stored is not None and stored.complete:
            stream_report.skipped = True
            self.reporter.not_this_run(source.frame_count or 0)
            return
        self.rows.writers.assign(stream_id)
        self.opened[stream_id], self.fingerprints[stream_id] = source, fingerprint
        self.open_in_store(stream_id)
        self.reporter.not_this_run(row)
        decoder = self.pool.take_decoder()
        self.start_decoding(stream_id, decoder, row)
        policy = self.setup.live.policy_for(source) if source.is_live else "every"
        self.dispatcher.open(stream_id, StreamState(decoder, row // self.setup.settings.batch_size, row, policy))

    def open_in_store(self, stream_id: str) -> None:
        """The stream opened (again: new writers) in the store, with its attrs."""
        source = self.opened[stream_id]
        attrs = _stream_attrs(source, self.setup.live, self.fingerprints[stream_id], self.rows.writers.index(stream_id))
        self.rows.open(stream_id, source.frame_count, attrs)

    def start_decoding(self, stream_id: str, decoder: Any, row: int) -> None:
        """``decoder`` opens the stream's source; its first batch starts at store row ``row``."""
        source = self.opened[stream_id]
        decoder.open.remote(source, self.setup.shape, self.setup.settings.batch_size, row,
                            self.setup.live if source.is_live else None)

