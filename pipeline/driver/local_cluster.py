"""A multi-node Ray cluster on this machine, on loopback (tests, benchmarks, trying the cluster mode
out): real nodes, each with its own raylet and object store, started as ``ray start`` would (worker
processes at Ray's default nice 15).

The nodes are at 127.0.0.2: Ray 2.60 turns 127.0.0.1 in an address into the machine's outward
address, where a loopback cluster does not listen (ray-project/ray#59110)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

LOOPBACK_NODE_IP = "127.0.0.2"


def start_local_cluster(nodes: int = 2, cpus_per_node: float = 2, gpus_per_node: float = 0) -> Any:
    """A ``ray.cluster_utils.Cluster`` of ``nodes`` nodes (the first is the head); join it with
    ``--address cluster.address``; stop it with ``cluster.shutdown()``. This process does not join.
    ``gpus_per_node``: GPUs each node reports (a resource label: on a machine without GPUs it tests
    placement, the replicas still score on the CPU)."""
    from ray.cluster_utils import Cluster

    saved = {key: os.environ.pop(key, None) for key in ("RAY_worker_niceness", "RAY_ADDRESS")}
    try:
        node = {"num_cpus": cpus_per_node, "num_gpus": gpus_per_node, "node_ip_address": LOOPBACK_NODE_IP}
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={**node, "include_dashboard": False})
        for _ in range(nodes - 1):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
    finally:
        os.environ.update({key: value for key, value in saved.items() if value is not None})
    return cluster


def worker_pids(cluster: Any, title: str) -> list[int]:
    """PIDs of the cluster's worker processes (children of its raylets) whose process title starts
    with ``title``, e.g. ``ray::ReplicaActor``. Linux (/proc)."""
    raylets = {str(node.all_processes["raylet"][0].process.pid) for node in cluster.list_all_nodes()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = (entry / "stat").read_text().rpartition(")")[2].split()[1]
            if parent in raylets and (entry / "cmdline").read_bytes().startswith(title.encode()):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found
