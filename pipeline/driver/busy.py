"""Progress across the cluster: the share of time each node's replicas spend scoring, as the run goes.

Replicas count their seconds inside the model (``ReplicaActor.busy``); the driver asks every few
seconds without waiting (the answer comes after the batches queued at the replica) and reads the
answers at its next look, so the loop never blocks on it.
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.exceptions import RayError

BUSY_EVERY_S = 5.0


class NodeBusy:
    """Per node: seconds its replicas scored / (seconds between two answers x its replicas), each
    replica over the interval between its own last two answers."""

    def __init__(self, every_s: float = BUSY_EVERY_S) -> None:
        self.every_s = every_s
        self.asked: dict[int, tuple[Any, float]] = {}  # replica slot -> (busy() reference, when asked)
        self.last: dict[int, tuple[float, float]] = {}  # replica slot -> (busy seconds, when read)
        self.delta: dict[int, tuple[float, float]] = {}  # replica slot -> (seconds scored, seconds) of its last interval
        self.shares: dict[str, float] = {}  # node id -> busy share over the last intervals

    def forget(self, slot: int) -> None:
        """A replica replaced by a new one: its count starts again."""
        self.asked.pop(slot, None)
        self.last.pop(slot, None)
        self.delta.pop(slot, None)

    def poll(self, replicas: list[Any], nodes: list[str | None]) -> bool:
        """Read the answers that are in (True: ``shares`` changed) and ask each replica whose last
        answer is older than ``every_s`` (or whose ask is three intervals old: a replica waiting
        for a node). ``nodes``: each replica slot's node id (None: not known yet)."""
        now = time.monotonic()
        ready = set(ray.wait([ref for ref, _ in self.asked.values()], num_returns=len(self.asked), timeout=0)[0]) \
            if self.asked else set()
        changed = False
        for slot, (ref, _) in list(self.asked.items()):
            if ref in ready:
                del self.asked[slot]
                changed |= self._read(slot, ref, now)
        for slot, replica in enumerate(replicas):
            asked = self.asked.get(slot)
            read = self.last.get(slot, (0.0, -self.every_s))[1]
            if (asked is None and now - read >= self.every_s) or (asked is not None and now - asked[1] >= 3 * self.every_s):
                self.asked[slot] = (replica.busy.remote(), now)
        if changed:
            self._shares(nodes)
        return changed

    def _read(self, slot: int, ref: Any, now: float) -> bool:
        try:
            busy = ray.get(ref)
        except RayError:  # lost: the loop replaces it
            self.forget(slot)
            return False
        before, self.last[slot] = self.last.get(slot), (busy, now)
        if before is None or busy < before[0]:  # new, or restarted by Ray (its count began again)
            self.delta.pop(slot, None)
            return False
        self.delta[slot] = (busy - before[0], now - before[1])
        return True

    def _shares(self, nodes: list[str | None]) -> None:
        scored: dict[str, float] = {}
        spans: dict[str, float] = {}
        for slot, (busy, span) in self.delta.items():
            node = nodes[slot] if slot < len(nodes) else None
            if node is not None:
                scored[node] = scored.get(node, 0.0) + busy
                spans[node] = spans.get(node, 0.0) + span
        self.shares = {node: min(1.0, scored[node] / spans[node]) for node in spans if spans[node] > 0}

    def line(self) -> str:
        """``node 1a2b3c4d 97 %, node 5e6f7a8b 95 %`` (the nodes' ids shortened as Ray prints them)."""
        return ", ".join(f"node {node[:8]} {share:.0%}".replace("%", " %") for node, share in sorted(self.shares.items()))
