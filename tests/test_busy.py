"""The progress line's per-node busy share (pipeline.driver.busy.NodeBusy), on stand-in replicas
whose busy seconds the test sets."""

import time

import pytest


def _poll_until(busy, replicas, nodes, done, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not done():
        busy.poll(replicas, nodes)
        assert time.monotonic() < deadline, "no answer from the replicas"
        time.sleep(0.01)


def test_busy_share_per_node_from_replica_seconds(ray_session):
    from anomstream.pipeline.driver.busy import NodeBusy

    @ray_session.remote(num_cpus=0)
    class Replica:
        def __init__(self):
            self.seconds = 0.0

        def add(self, seconds):
            self.seconds += seconds

        def busy(self):
            return self.seconds

    replicas = [Replica.remote() for _ in range(3)]
    nodes = ["aaaaaaaa11", "aaaaaaaa11", "bbbbbbbb22"]
    ray_session.get([replica.busy.remote() for replica in replicas])  # started: they answer at once from here on
    busy = NodeBusy(every_s=0.5)
    _poll_until(busy, replicas, nodes, lambda: len(busy.last) == 3)  # where each replica starts from
    assert busy.shares == {}
    started = time.monotonic()
    ray_session.get([replicas[0].add.remote(0.2), replicas[1].add.remote(0.0), replicas[2].add.remote(10.0)])
    time.sleep(0.5)
    _poll_until(busy, replicas, nodes, lambda: len(busy.delta) == 3)  # asked again, after the seconds were added
    elapsed = time.monotonic() - started
    assert busy.shares["bbbbbbbb22"] == 1.0  # capped: a node's replicas cannot be more than all busy
    assert busy.shares["aaaaaaaa11"] == pytest.approx(0.2 / (2 * elapsed), rel=0.3)
    assert busy.line().startswith("node aaaaaaaa ") and busy.line().endswith(", node bbbbbbbb 100 %")
    busy.forget(2)  # replaced: no share until two answers of the new one
    busy._shares(nodes)
    assert list(busy.shares) == ["aaaaaaaa11"]
    for replica in replicas:
        ray_session.kill(replica)
