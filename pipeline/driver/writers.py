"""The run's writers: K writer actors on one store, each owning whole streams.

One writer per stream keeps zarr's chunk writes safe (no two processes write one array), and K of
them spread the writing of many streams over K processes. Writer 0 also keeps the store's root
attrs and delivers the webhook's outbox (the others only put their events' messages in it). A
lost writer is replaced with all the others (:meth:`WriterSet.replace_all`): every open stream
then goes on from its ``written`` mark.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError

from ..errors import AnomstreamError

WRITER_GONE_S = 10.0  # longest wait for a writer given up on to be gone before its successor opens the store


class WriterSet:
    """``writers``: (actor, pid) of each writer, writer 0 first. Streams are assigned to the writer
    with the fewest open streams when they open (:meth:`assign`) and stay with it."""

    def __init__(self, writers: list[tuple[Any, int]]) -> None:
        self.actors = [actor for actor, _ in writers]
        self.pids = [pid for _, pid in writers]
        self.owner: dict[str, int] = {}  # open stream -> index of its writer

    def add(self, writer: tuple[Any, int]) -> None:
        self.actors.append(writer[0])
        self.pids.append(writer[1])

    @property
    def root(self) -> Any:
        """Writer 0: the store's root attrs, the webhook's delivery."""
        return self.actors[0]

    def assign(self, stream_id: str) -> Any:
        """The writer a newly opened stream goes to (kept until :meth:`release`)."""
        load = [0] * len(self.actors)
        for index in self.owner.values():
            load[index] += 1
        self.owner[stream_id] = min(range(len(self.actors)), key=load.__getitem__)
        return self.actors[self.owner[stream_id]]

    def of(self, stream_id: str) -> Any:
        """The writer of an open stream (writer 0 for a stream not opened yet: asking what the store holds)."""
        return self.actors[self.owner.get(stream_id, 0)]

    def index(self, stream_id: str) -> int:
        return self.owner.get(stream_id, 0)

    def release(self, stream_id: str) -> None:
        self.owner.pop(stream_id, None)

    def accounting(self) -> dict[str, dict[str, Any]]:
        """Every writer's open streams' accounting attrs (:meth:`WriterActor.accounting`)."""
        merged: dict[str, dict[str, Any]] = {}
        for part in ray.get([actor.accounting.remote() for actor in self.actors]):
            merged.update(part)
        return merged

    def take_events(self, lost_ok: bool = False) -> list[dict[str, Any]]:
        """Event messages since the last call, writer after writer (each stream's in its order).
        ``lost_ok``: writers that do not answer within 5 s are left out (a lost writer's are gone)
        instead of raising."""
        refs = [actor.take_events.remote() for actor in self.actors]
        if not lost_ok:
            return [message for part in ray.get(refs) for message in part]
        news = []
        for ref in refs:
            try:
                news += ray.get(ref, timeout=5.0)
            except RayError:
                pass
        return news

    def view_snapshot(self) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for part in ray.get([actor.view_snapshot.remote() for actor in self.actors]):
            merged.update(part)
        return merged

    def close_events(self) -> int:
        """End of the run: the other writers' event logs first, then writer 0 delivers what is in
        the outbox. Returns the messages left undelivered."""
        ray.get([actor.close_events.remote() for actor in self.actors[1:]])
        return ray.get(self.root.close_events.remote())

    def flush_due(self) -> list[Any]:
        return [actor.flush_due.remote() for actor in self.actors]

    def flush_all(self, timeout_s: float = 10.0) -> None:
        """Every writer that still answers puts the rows it received onto disk (the others' are
        gone with them: their streams go on from ``written``)."""
        refs = [actor.flush_all.remote() for actor in self.actors]
        for ref in refs:
            try:
                ray.get(ref, timeout=timeout_s)
            except RayError:
                pass

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)

    def replace_all(self, new_writer: Callable[[int], tuple[Any, int]]) -> None:
        """Kill every writer (the ones that answer put their rows on disk first), wait until each
        process is gone (no write of theirs may land after a successor opens the store), and start
        new ones (``new_writer(index)``); streams keep their writer's index."""
        self.flush_all()
        self.kill()
        for pid in self.pids:
            _wait_gone(pid)
        for index in range(len(self.actors)):
            self.actors[index], self.pids[index] = new_writer(index)


def _wait_gone(pid: int) -> None:
    """Until process ``pid`` (on this machine: writers run on the driver's node) has ended.
    Raises AnomstreamError when it is still there after WRITER_GONE_S."""
    deadline = time.monotonic() + WRITER_GONE_S
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                return  # ended, not yet reaped by its raylet
        except FileNotFoundError:
            return
        except (OSError, IndexError):  # no /proc: ask the kernel
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass
        time.sleep(0.05)
    raise AnomstreamError(f"the writer process {pid} did not end after it was killed; what is written is kept: "
                          f"run again with --resume")
