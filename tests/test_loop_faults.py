"""The driver's event loop through each fault path, with actors and Ray calls played by fakes.

No Ray and no timing: every fake reference is ready when made, ``ray.wait`` hands them out in the
order they were made, and a fault is scripted on a given batch. What is checked is what a run
would leave in the store (rows per stream, in order, each once), how each stream closed, and the
faults counted.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

import anomstream.pipeline.driver.loop as loop_module
from anomstream.pipeline.config import ScoreSection
from anomstream.pipeline.driver.loop import ScoringLoop
from anomstream.pipeline.driver.opening import StreamSetup
from anomstream.pipeline.driver.report import RunReport
from anomstream.pipeline.driver.reporter import Reporter
from anomstream.pipeline.driver.schedule import ReplicaSlot
from anomstream.pipeline.driver.writers import WriterSet
from anomstream.pipeline.sources.base import StreamSettings
from anomstream.pipeline.store import StoredStream
from anomstream.pipeline.stream.live import LiveOptions
from anomstream.pipeline.stream.windows import BatchHeader, EndOfStream, WindowShape

BATCH = 16


class Ref:
    """A finished fake task: its value, or the error ``ray.get`` raises."""

    counter = itertools.count()

    def __init__(self, value=None, error: BaseException | None = None) -> None:
        self.value, self.error, self.order = value, error, next(Ref.counter)


class AnsweredWhenRead(Ref):
    """A writer's answer made when ``ray.get`` reads it: RayActorError if the writer died since."""

    def __init__(self, writer, answer) -> None:
        super().__init__()
        self.writer, self.answer = writer, answer

    def read(self):
        if self.writer.dead:
            raise RayActorError()
        return self.answer()


class FakeRay:
    @staticmethod
    def get(ref, timeout=None):
        if isinstance(ref, list):
            return [FakeRay.get(r) for r in ref]
        if isinstance(ref, AnsweredWhenRead):
            return ref.read()
        if ref.error is not None:
            raise ref.error
        return ref.value

    @staticmethod
    def wait(refs, num_returns=1, timeout=None):
        ready = sorted(refs, key=lambda ref: ref.order)[:num_returns]
        return ready, [ref for ref in refs if ref not in ready]


class Method:
    def __init__(self, function) -> None:
        self.function = function

    def remote(self, *args):
        return self.function(*args)


class FakeSource:
    def __init__(self, stream_id: str, frames: int, live: bool = False) -> None:
        self.stream_id, self.frame_count, self.is_live = stream_id, None if live else frames, live
        self.frames, self.fps, self.live_policy, self.warnings = frames, 10.0, "latest" if live else "every", []
        self.settings = StreamSettings()  # no cameras file: the run's own settings
        self.scene_checked = True

    def describe(self) -> str:
        return f"{self.stream_id}.avi"

    def fingerprint(self):
        return None

    def items(self):
        return None


class Faults:
    """Scripted faults, each met once: (kind, stream, batch sequence) -> how many more times."""

    def __init__(self, **script: int) -> None:
        self.script = dict(script)

    def take(self, kind: str, stream_id: str, sequence: int) -> bool:
        key = f"{kind}_{stream_id}_{sequence}"
        if self.script.get(key, 0) > 0:
            self.script[key] -= 1
            return True
        return False


class FakeDecoder:
    def __init__(self, faults: Faults) -> None:
        self.faults, self.source = faults, None
        self.open = Method(self._open)
        self.next_batch = Method(self._next)
        self.stop = Method(lambda: Ref())

    def _open(self, source, shape, batch_size, row, live):
        self.source, self.sequence = source, row // batch_size
        return Ref()

    def _next(self):
        source, sequence = self.source, self.sequence
        if self.faults.take("decoder", source.stream_id, sequence):
            return Ref(error=RayActorError()), Ref(error=RayActorError())
        self.sequence += 1
        first = sequence * BATCH
        if self.faults.take("skip", source.stream_id, sequence):  # a decoder bug: a batch number left out
            self.sequence += 1
            first, sequence = first + BATCH, sequence + 1
        if first >= source.frames:
            return Ref(EndOfStream(source.stream_id, source.frames)), Ref()
        size = min(BATCH, source.frames - first)
        newest = 0.0 if source.is_live else float(first)  # a live frame captured long ago: too old for any bound
        header = BatchHeader(source.stream_id, sequence, first, size, scorable=size, newest=newest)
        return Ref(header), Ref((source.stream_id, sequence, first, size))


class FakeReplica:
    count = itertools.count()

    def __init__(self, faults: Faults) -> None:
        self.faults, self.pid = faults, 1000 + next(FakeReplica.count)
        self.score = Method(self._score)

    def _score(self, model_call, batch_ref):
        stream_id, sequence, first, size = batch_ref.value
        if self.faults.take("replica", stream_id, sequence):
            return Ref(error=RayActorError()), Ref(error=RayActorError())
        if self.faults.take("model", stream_id, sequence):
            error = RayTaskError("score", "traceback", ValueError("weights are NaN"))
            return Ref(error=error), Ref(error=error)
        if self.faults.take("lostbatch", stream_id, sequence):
            error = ObjectLostError("ab" * 14, None, "")
            return Ref(error=error), Ref(error=error)
        rows = {"frame_index": np.arange(first, first + size)}
        return Ref({"pid": self.pid, "node": "node1"}), Ref(rows)


class FakeStore:
    """What reached the disk: rows per stream (as frame indices), how each stream was closed."""

    def __init__(self) -> None:
        self.rows: dict[str, list[int]] = {}
        self.closed: dict[str, tuple[str | None, list[str]]] = {}
        self.unscored: dict[str, list[int]] = {}


class FakeWriter:
    def __init__(self, store: FakeStore, faults: Faults) -> None:
        self.store, self.faults, self.dead = store, faults, False
        for name in ("stored_stream", "open_stream", "write", "write_unscored", "close_stream", "add_gaps", "flush_due",
                     "flush_all", "accounting"):
            setattr(self, name, Method(getattr(self, f"_{name}")))

    def _call(self, value=None):
        return Ref(error=RayActorError()) if self.dead else Ref(value)

    def _stored_stream(self, stream_id):
        rows = self.store.rows.get(stream_id)
        return self._call(None if rows is None else StoredStream(f"{stream_id}.avi", stream_id in self.store.closed,
                                                                    len(rows)))

    def _open_stream(self, stream_id, arrays, chunk, frame_count, attrs):
        self.store.rows.setdefault(stream_id, [])
        return self._call()

    def _append(self, stream_id, row, frame_indices):
        rows = self.store.rows[stream_id]
        assert row == len(rows), f"{stream_id}: row {row} written after {len(rows)} rows"
        rows.extend(int(i) for i in frame_indices)

    def _write(self, stream_id, row, result, shown):
        if self.faults.take("writer", stream_id, row // BATCH):
            self.dead = True
        if not self.dead:
            self._append(stream_id, row, result.value["frame_index"])
        return self._call()

    def _write_unscored(self, stream_id, row, batch, dropped):
        _, _, first, size = batch.value
        if not self.dead:
            self._append(stream_id, row, range(first, first + size))
            self.store.unscored.setdefault(stream_id, []).extend([dropped] * size)
        return self._call()

    def _close_stream(self, stream_id, error, warnings, stopping):
        if not self.dead:
            self.store.closed[stream_id] = (error, warnings)
        return self._call()

    def _add_gaps(self, stream_id, gaps):
        return self._call()

    def _flush_due(self):
        return self._call()

    def _flush_all(self):
        return self._call()

    def _accounting(self):
        return self._call({})


class FakePool:
    """The ActorPool's surface, with fake actors."""

    def __init__(self, replicas: int, decoders: int, faults: Faults, store: FakeStore) -> None:
        self.faults, self.store, self.model_call = faults, store, ["model"]
        self.replicas = [ReplicaSlot(FakeReplica(faults)) for _ in range(replicas)]
        self.free_decoders = [FakeDecoder(faults) for _ in range(decoders)]
        self.writers = WriterSet([(FakeWriter(store, faults), 1)])
        self.writers_replaceable = True
        self.replaced = {"replica": 0, "decoder": 0, "writers": 0}

    @property
    def replica_actors(self):
        return [slot.actor for slot in self.replicas]

    def take_decoder(self):
        return self.free_decoders.pop() if self.free_decoders else None

    def release_decoder(self, decoder):
        self.free_decoders.append(decoder)

    def replace_decoder(self, decoder):
        self.replaced["decoder"] += 1
        return FakeDecoder(self.faults)

    def replace_replica(self, index):
        self.replaced["replica"] += 1
        old = self.replicas[index]
        self.replicas[index] = ReplicaSlot(FakeReplica(self.faults), replacements=old.replacements + 1)

    def replace_writers(self):
        self.replaced["writers"] += 1
        self.writers.actors = [FakeWriter(self.store, self.faults)]


@pytest.fixture
def fake_ray(monkeypatch):
    monkeypatch.setattr(loop_module, "ray", FakeRay)
    monkeypatch.setattr("anomstream.pipeline.driver.writers.ray", FakeRay)
    monkeypatch.setattr("anomstream.pipeline.driver.writing.ray", FakeRay)


def _run(sources, faults: Faults, replicas: int = 2, live: LiveOptions | None = None, decoders: int | None = None,
         pool: FakePool | None = None):
    store = pool.store if pool is not None else FakeStore()
    pool = pool or FakePool(replicas, decoders=decoders or len(sources), faults=faults, store=store)
    report = RunReport("fake.zarr")
    report.faults.echo = False
    setup = StreamSetup(WindowShape(5, 128, 1), {}, ScoreSection(replicas=replicas, batch_size=BATCH, flush_s=0),
                        live or LiveOptions())
    ScoringLoop(sources, setup, pool, report, Reporter()).run()
    return store, report, pool


def _whole(frames: int) -> list[int]:
    return list(range(frames))


def test_a_clean_run_writes_every_row_once_in_order(fake_ray):
    store, report, _ = _run([FakeSource("a", 40), FakeSource("b", 33)], Faults())
    assert store.rows == {"a": _whole(40), "b": _whole(33)}
    assert store.closed == {"a": (None, []), "b": (None, [])} and not report.faults.counts
    assert report.frames == 73


def test_a_replica_given_up_by_ray_is_replaced_once_and_its_batches_go_out_again(fake_ray):
    """Both batches in replica 0 fail with it: one new replica, both batches resent."""
    store, report, pool = _run([FakeSource("a", 64)], Faults(replica_a_0=1, replica_a_1=1), replicas=1)
    assert store.rows == {"a": _whole(64)} and store.closed["a"] == (None, [])
    assert pool.replaced["replica"] == 1
    assert report.faults.counts == {"replica_replaced": 1, "batch_resent": 2}


def test_a_batch_that_kills_every_replica_ends_its_stream_only(fake_ray):
    store, report, _ = _run([FakeSource("a", 64), FakeSource("b", 40)], Faults(replica_a_1=3), replicas=2)
    assert store.rows["a"] == _whole(16)  # the batch before it is kept
    assert store.closed["a"][0] == "a.avi: 3 replicas lost while scoring frames 16-31"
    assert store.rows["b"] == _whole(40) and store.closed["b"] == (None, [])
    assert report.streams["a"].error == store.closed["a"][0]


def test_a_model_error_ends_one_stream_and_keeps_its_earlier_rows(fake_ray):
    store, report, _ = _run([FakeSource("a", 64), FakeSource("b", 40)], Faults(model_a_2=1))
    assert store.rows == {"a": _whole(32), "b": _whole(40)}
    assert store.closed["a"][0] == "a.avi: scoring failed at frame 32 (ValueError: weights are NaN)"
    assert store.closed["b"] == (None, []) and not report.faults.counts


def test_a_lost_decoder_or_decoded_batch_makes_the_stream_decode_again_from_its_written_rows(fake_ray):
    store, report, pool = _run([FakeSource("a", 64)], Faults(decoder_a_2=1, lostbatch_a_3=1))
    assert store.rows == {"a": _whole(64)} and store.closed["a"] == (None, [])
    assert report.faults.counts == {"stream_redecoded": 2} and pool.replaced["decoder"] == 2


def test_a_stream_decoded_again_too_often_ends_with_what_it_wrote(fake_ray):
    store, report, _ = _run([FakeSource("a", 64), FakeSource("b", 20)], Faults(decoder_a_1=4))
    assert store.rows["a"] == _whole(len(store.rows["a"])) and store.rows["b"] == _whole(20)  # a prefix, each row once
    assert store.closed["a"][0] == "a.avi: decoder of stream a lost (The actor experienced an error before finishing " \
                                   "this task.); given up after 3 new start(s)"
    assert report.faults.counts == {"stream_redecoded": 3}


def test_a_lost_writer_is_replaced_and_every_stream_goes_on_from_its_written_rows(fake_ray):
    store, report, pool = _run([FakeSource("a", 64), FakeSource("b", 48)], Faults(writer_a_2=1))
    assert store.rows == {"a": _whole(64), "b": _whole(48)}
    assert store.closed == {"a": (None, []), "b": (None, [])}
    assert pool.replaced["writers"] == 1 and report.faults.counts == {"writer_replaced": 1}
    assert report.frames == 112  # rows sent to the lost writer are not counted twice


def test_a_decoder_that_skips_a_batch_is_a_stall_not_a_hang(fake_ray):
    with pytest.raises(RuntimeError, match=r"^scoring stalled: streams \['a'\] wait on nothing$"):
        _run([FakeSource("a", 64)], Faults(skip_a_1=1))


def test_a_live_stream_whose_every_batch_is_too_old_is_written_as_dropped_not_stalled(fake_ray):
    """--max-latency-ms smaller than any batch's age: every batch dropped, none scored, the run ends."""
    store, report, _ = _run([FakeSource("cam", 40, live=True)], Faults(), replicas=1,
                            live=LiveOptions(max_latency_ms=1))
    assert store.rows == {"cam": _whole(40)} and store.unscored["cam"] == [True] * 40
    assert store.closed["cam"] == (None, [])


def test_interrupting_the_loop_closes_open_streams_as_interrupted(fake_ray, monkeypatch):
    calls = SimpleNamespace(n=0)
    original = FakeRay.wait

    def wait_then_interrupt(refs, num_returns=1, timeout=None):
        calls.n += 1
        if calls.n == 3:
            raise KeyboardInterrupt
        return original(refs, num_returns, timeout)

    monkeypatch.setattr(FakeRay, "wait", staticmethod(wait_then_interrupt))
    store = FakeStore()
    with pytest.raises(KeyboardInterrupt):
        pool = FakePool(1, 1, Faults(), store)
        setup = StreamSetup(WindowShape(5, 128, 1), {}, ScoreSection(replicas=1, batch_size=BATCH, flush_s=0), LiveOptions())
        ScoringLoop([FakeSource("a", 64)], setup, pool, RunReport("fake.zarr"), Reporter()).run()
    assert store.closed["a"][0] == "interrupted" and store.rows["a"] == list(range(len(store.rows["a"])))


def test_a_writer_lost_after_every_stream_closed_costs_the_run_attrs_only(fake_ray, monkeypatch, capsys):
    from anomstream.pipeline.driver import run as run_module

    monkeypatch.setattr(run_module, "ray", FakeRay)
    store, report, pool = _run([FakeSource("a", 20)], Faults())
    pool.writers.actors[0].dead = True
    run_module._finish(pool, report)  # the run's last step, after the loop
    assert capsys.readouterr().err == ("warning: a writer was lost after every stream was closed (RayActorError: The "
                                       "actor experienced an error before finishing this task.); the streams are "
                                       "complete, the store's root attrs faults and replicas are not written\n")
    assert store.closed == {"a": (None, [])} and store.rows["a"] == _whole(20)


class AwaitedRef(Ref):
    """A fake reference that notes when ``ray.get`` reads it."""

    def __init__(self, log: list, name: str, value=None, error=None) -> None:
        super().__init__(value, error)
        self.log, self.name = log, name


class LoggingWriter(FakeWriter):
    """A FakeWriter whose opens note when they are awaited, and whose stored-state answers note when asked."""

    def __init__(self, store, faults, log: list, open_error: BaseException | None = None) -> None:
        super().__init__(store, faults)
        self.log, self.open_error = log, open_error

    def _stored_stream(self, stream_id):
        self.log.append(("asked", stream_id))
        return super()._stored_stream(stream_id)

    def _open_stream(self, stream_id, arrays, chunk, frame_count, attrs):
        super()._open_stream(stream_id, arrays, chunk, frame_count, attrs)
        self.log.append(("open", stream_id))
        return AwaitedRef(self.log, f"open {stream_id}", error=self.open_error)


class LoggingReplica(FakeReplica):
    def __init__(self, faults, log: list) -> None:
        super().__init__(faults)
        self.log = log
        self.score = Method(self._logged_score)

    def _logged_score(self, model_call, batch_ref):
        self.log.append(("score", batch_ref.value[0]))
        return self._score(model_call, batch_ref)


@pytest.fixture
def awaited_log(fake_ray, monkeypatch):
    """A log of the fake run's calls, with ``("awaited", name)`` where ray.get read an AwaitedRef."""
    log: list = []
    plain_get = FakeRay.get

    def get(ref, timeout=None):
        if isinstance(ref, AwaitedRef):
            log.append(("awaited", ref.name))
        return plain_get(ref, timeout)

    monkeypatch.setattr(FakeRay, "get", staticmethod(get))
    return log


def _logging_pool(log: list, decoders: int, open_error: BaseException | None = None) -> FakePool:
    pool = FakePool(2, decoders, Faults(), FakeStore())
    pool.writers = WriterSet([(LoggingWriter(pool.store, pool.faults, log, open_error), 1)])
    pool.replicas = [ReplicaSlot(LoggingReplica(pool.faults, log)) for _ in range(2)]
    return pool


def test_the_store_is_asked_about_inputs_ahead_and_a_streams_opening_is_not_waited_for(awaited_log):
    """Two decoders, five inputs: the first four inputs' stored state is asked before the first opens
    (two to open, two ahead), and the first stream is scored before its opening is awaited."""
    sources = [FakeSource(name, 40) for name in "abcde"]
    store, report, _ = _run(sources, Faults(), pool=_logging_pool(awaited_log, decoders=2))
    assert store.rows == {name: _whole(40) for name in "abcde"}
    assert set(store.closed) == set("abcde") and report.frames == 200
    assert awaited_log[:5] == [("asked", "a"), ("asked", "b"), ("asked", "c"), ("asked", "d"), ("open", "a")]
    assert awaited_log.index(("score", "a")) < awaited_log.index(("awaited", "open a"))
    asked = [entry[1] for entry in awaited_log if entry[0] == "asked"]
    assert asked == list("abcde")  # each input asked once


def test_a_stream_that_cannot_be_opened_in_the_store_ends_the_run_with_the_stores_error(awaited_log):
    from anomstream.pipeline.errors import StoreError

    cause = StoreError("out.zarr: cannot write the store (No space left on device); what is written is kept")
    error = RayTaskError("open_stream", "traceback", cause).as_instanceof_cause()
    pool = _logging_pool(awaited_log, decoders=1, open_error=error)
    with pytest.raises(StoreError) as failed:
        _run([FakeSource("a", 40)], Faults(), pool=pool)
    assert str(failed.value) == ("out.zarr: cannot write the store (No space left on device); what is written is "
                                 "kept: run again with --resume")
    assert ("open", "a") in awaited_log and ("score", "a") in awaited_log  # sent on without waiting for the open
    assert pool.store.closed == {}  # the stream is not closed, as complete or otherwise


class AskedLazilyWriter(FakeWriter):
    """Answers what the store holds of a stream when the answer is read, as Ray does: an answer
    asked of a writer that died before it was read fails."""

    def _stored_stream(self, stream_id):
        return AnsweredWhenRead(self, lambda: super(AskedLazilyWriter, self)._stored_stream(stream_id).value)


def test_a_writer_lost_while_inputs_wait_is_replaced_and_their_stored_state_asked_again(fake_ray):
    """Four inputs, two decoders: the writer dies at a's third batch, after c and d were asked about."""
    sources = [FakeSource(name, 48) for name in "abcd"]
    pool = FakePool(2, 2, Faults(writer_a_2=1), FakeStore())
    pool.writers = WriterSet([(AskedLazilyWriter(pool.store, pool.faults), 1)])
    store, report, pool = _run(sources, pool.faults, pool=pool)
    assert store.rows == {name: _whole(48) for name in "abcd"}
    assert store.closed == {name: (None, []) for name in "abcd"}
    assert pool.replaced["writers"] == 1 and report.faults.counts == {"writer_replaced": 1}
