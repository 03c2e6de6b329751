"""The run's actors, owned in one place: creation, replacement after a fault, and teardown.

:class:`ActorPool` starts the replicas (a slot each, :class:`ReplicaSlot`), the decoders (a reused
pool: one source at a time each) and the writers (:class:`WriterSet`), replaces whichever a fault
takes, and kills every actor it ever started when the run ends (a context manager), the replaced
ones included. Nothing else in the driver creates or kills an actor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import ray

from ...workers.decoder import DecodeActor
from ...workers.replica import ReplicaActor
from ...workers.writer import WriterActor, WriterConfig
from .schedule import ReplicaSlot
from .writers import WriterSet

SMALL_CPU = 0.05  # decode and writer actors mostly wait; reserving whole CPUs would starve replicas
# Ray keeps an event per actor call in its GCS (for the dashboard's task list): a live run makes tens of
# calls a second, and the GCS grew ~6 MiB/min for it (benchmarks/live_memory.py). ANOMSTREAM_DEBUG keeps them.
TASK_EVENTS = bool(os.environ.get("ANOMSTREAM_DEBUG"))


@dataclass(frozen=True)
class Placement:
    """Where the actors go: ``replica_options`` (Ray options of a replica: CPUs or a GPU fraction,
    restarts), ``replica_threads`` (torch threads per replica; None: the scorer's default),
    ``writer_node`` (the scheduling strategy pinning writers to the driver's node)."""

    replica_options: dict[str, Any]
    replica_threads: int | None
    writer_node: Any


class ActorPool:
    """A run's actors. ``model_call``: ``[ref]`` to the model's contents in the object store, which
    every replica call carries (a restarted replica loads from it). ``writer_config``: how writer 0
    opens the store (the others join it; new writers after a loss reopen it in resume mode);
    ``writers_replaceable``: False for runs whose lost writer ends the run (live, rotating)."""

    def __init__(self, model_call: list[Any], placement: Placement, writer_config: WriterConfig,
                 writers_replaceable: bool = True) -> None:
        self.model_call, self.placement, self.writer_config = model_call, placement, writer_config
        self.writers_replaceable = writers_replaceable
        self.replicas: list[ReplicaSlot] = []
        self.decoders: list[Any] = []  # every decoder started, for the teardown
        self.free_decoders: list[Any] = []
        self.writers: WriterSet | None = None
        self._retired: list[Any] = []  # replaced actors, killed again at the end

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()

    def start(self, replicas: int, decoders: int) -> None:
        """Start the replicas and decoders (their processes start while the writers open the store)."""
        for _ in range(replicas):  # one by one: an interrupted start still kills those started
            self.replicas.append(ReplicaSlot(self._new_replica()))
        for _ in range(decoders):
            self.free_decoders.append(self._new_decoder())

    def open_writers(self, count: int) -> WriterSet:
        """Writer 0 opens the store as ``writer_config`` says, then ``count - 1`` more join it."""
        self.writers = WriterSet([self._open_writer(self.writer_config.mode, 0)])
        for index in range(1, count):
            self.writers.add(self._open_writer(self.writer_config.mode, index))
        return self.writers

    @property
    def replica_actors(self) -> list[Any]:
        return [slot.actor for slot in self.replicas]

    def take_decoder(self) -> Any | None:
        """A free decoder for a stream that opens (None: all busy)."""
        return self.free_decoders.pop() if self.free_decoders else None

    def release_decoder(self, decoder: Any) -> None:
        self.free_decoders.append(decoder)

    def replace_decoder(self, decoder: Any) -> Any:
        """Kill ``decoder`` (lost, or stopped for good) and start a new one in its place."""
        ray.kill(decoder)
        return self._new_decoder()

    def replace_replica(self, index: int) -> None:
        """Kill replica ``index`` for good (unavailable for now may still mean alive later) and
        start a new one in its slot; its pid and node are known again from its first answer."""
        slot = self.replicas[index]
        ray.kill(slot.actor, no_restart=True)
        self._retired.append(slot.actor)
        self.replicas[index] = ReplicaSlot(self._new_replica(), replacements=slot.replacements + 1)

    def replace_writers(self) -> None:
        """Every writer replaced by a new one that reopens the store (:meth:`WriterSet.replace_all`)."""
        self.writers.replace_all(lambda index: self._open_writer("resume", index))

    def kill_all(self) -> None:
        writers = self.writers.actors if self.writers is not None else []
        for actor in (*self.replica_actors, *self.decoders, *writers, *self._retired):
            ray.kill(actor)

    def _new_replica(self) -> Any:
        return ReplicaActor.options(**self.placement.replica_options, enable_task_events=TASK_EVENTS).remote(
            self.placement.replica_threads)

    def _new_decoder(self) -> Any:
        decoder = DecodeActor.options(num_cpus=SMALL_CPU, enable_task_events=TASK_EVENTS).remote()
        self.decoders.append(decoder)
        return decoder

    def _open_writer(self, mode: str, index: int) -> tuple[Any, int]:
        """A writer on the driver's node with the store open, and its pid. Writer 0 opens the store
        in ``mode`` and delivers the webhook's outbox; the others join it (resume mode)."""
        config = replace(self.writer_config, mode=mode if index == 0 else "resume", deliver=index == 0)
        writer = WriterActor.options(num_cpus=0, scheduling_strategy=self.placement.writer_node,
                                     enable_task_events=TASK_EVENTS).remote()
        try:
            return writer, ray.get(writer.open.remote(config))
        except BaseException:
            ray.kill(writer)
            raise
