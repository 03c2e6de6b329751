"""Scoring on a multi-node Ray cluster on loopback (ray.cluster_utils.Cluster: a head and a worker
node, each with its own raylet and object store), with faults injected by killing processes.

Every check reads the store with zarr alone (not the writer's code) and compares it with a run
where nothing went wrong (the session's ``clean_run``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import CLEAN_RUN_BATCH, REPO, first_frames

from anomstream.pipeline.driver.local_cluster import start_local_cluster, worker_pids

FRAMES = 112  # of clip 02's 180
ARRAYS = ("frame_index", "status", "valid", "score_raw", "score", "term_gradient_excess", "term_deformation")


@pytest.fixture(scope="module")
def cluster():
    """Head + one worker node, 2 CPUs each, on loopback, workers at Ray's default nice 15."""
    nodes = start_local_cluster(nodes=2, cpus_per_node=2)
    yield nodes
    nodes.shutdown()


def _written(store: Path, stream: str) -> int:
    try:
        return int(zarr.open_group(str(store), mode="r")[stream].attrs.get("written", 0))
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def _wait_for_rows(run: subprocess.Popen, store: Path, stream: str, rows: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while _written(store, stream) < rows and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, f"the run ended before the fault: {run.communicate()}"


def _score_command(cluster, ped2, out: Path) -> list[str]:
    """The clean run's clip 02, its first FRAMES frames (the CI's time budget), with its settings
    (replicas, batch size, threads) on the cluster."""
    clip = first_frames(ped2, "02", FRAMES, out.parent / "input")
    config = out.with_suffix(".yaml")
    # every batch's rows on disk as they come (the faults are timed by `written`, which lags by up to
    # flush_s otherwise: the last kills would come when the job is nearly done)
    config.write_text(f"model:\n  name: dmad\nscore:\n  replicas: 2\n  batch_size: {CLEAN_RUN_BATCH}\n  replica_threads: 1\n"
                      f"  flush_s: 0\n")
    return [sys.executable, "-m", "anomstream.pipeline.cli", "score", str(clip), "--config", str(config),
            "--address", cluster.address, "--out", str(out), "--quiet"]


def _assert_same_as_clean(out: Path, clean: Path) -> zarr.Group:
    """Read with zarr alone: every frame once, in order, every array equal to the clean run's."""
    faulted, reference = zarr.open_group(str(out), mode="r"), zarr.open_group(str(clean), mode="r")["02"]
    assert list(faulted.group_keys()) == ["02"]
    group = faulted["02"]
    assert group.attrs["complete"] is True and group.attrs["written"] == FRAMES
    np.testing.assert_array_equal(group["frame_index"][:], np.arange(FRAMES))
    for name in (*ARRAYS, "map"):
        np.testing.assert_array_equal(group[name][:], reference[name][:FRAMES], err_msg=name)
    return faulted


def test_replica_decoder_and_writer_killed_mid_run_on_two_nodes_lose_no_frame(cluster, clean_run, ped2, tmp_path):
    """The issue's fault test on two nodes: a DecodeActor process SIGKILLed (its stream is decoded
    again from its next unwritten row), later a ReplicaActor process (Ray restarts it and the
    driver sends its batches again), then the WriterActor (a new writer reopens the store from its ``written``
    marks; the rows sent after them are sent again). Exit 0, every frame once in order, every
    array equal to the clean run."""
    out = tmp_path / "faulted.zarr"
    run = subprocess.Popen(_score_command(cluster, ped2, out), cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        # the decoder first, while it has frames left: it runs at most the replicas' capacity ahead
        # of the writer (a few batches), and a run of 112 frames takes ~5 s with ONNX Runtime
        _wait_for_rows(run, out, "02", CLEAN_RUN_BATCH)
        decoders = worker_pids(cluster, "ray::DecodeActor")
        assert len(decoders) == 1
        os.kill(decoders[0], signal.SIGKILL)
        _wait_for_rows(run, out, "02", 24)
        replicas = worker_pids(cluster, "ray::ReplicaActor")
        assert len(replicas) == 2
        os.kill(replicas[0], signal.SIGKILL)
        _wait_for_rows(run, out, "02", 48)
        writers = worker_pids(cluster, "ray::WriterActor")
        assert len(writers) == 1
        os.kill(writers[0], signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=300)
    finally:
        run.kill()
    assert run.returncode == 0, stderr
    assert "faults survived: replica restarted 1, stream redecoded 1, writer replaced 1" in stdout
    assert "on 2 nodes" in stdout
    warnings = sorted(line for line in stderr.splitlines() if line.startswith("warning:"))  # in the order noticed
    assert len(warnings) == 3, stderr
    assert warnings[0].startswith("warning: decoder of stream ") and "decoded again from row" in warnings[0]
    assert warnings[1].startswith("warning: replica ") and "lost; Ray restarted it as process" in warnings[1]
    assert warnings[2].startswith("warning: writer lost (") and "a new writer took over the store" in warnings[2]

    root = _assert_same_as_clean(out, clean_run[0]).attrs
    assert root["faults"]["counts"] == {"replica_restarted": 1, "stream_redecoded": 1, "writer_replaced": 1}
    assert len(root["faults"]["messages"]) == 3
    placed = root["replicas"]
    assert len(placed) == 2 and all(replica["node"] for replica in placed)  # (spread at the start: "on 2 nodes")
    assert {replica["nice"] for replica in placed} == {0}  # raised from Ray's nice 15 by the replicas themselves


def test_driver_killed_then_resume_survives_a_lost_node_and_writes_exactly_what_is_missing(cluster, clean_run, ped2,
                                                                                          tmp_path):
    """The driver SIGKILLed mid-run (its job's actors go with it); `--resume` continues each stream
    from its `written` mark, the calibrated score's trailing window from the rows on disk, and while
    it runs the worker node and every process on it are killed without notice to the head: the
    replica that was there starts again on the head, what was lost with the node is decoded and
    scored again. Exit 0; the store ends equal to the clean run. Last in this module: a new worker
    node joins at the end."""
    out = tmp_path / "resumed.zarr"
    command = _score_command(cluster, ped2, out)
    config = Path(command[command.index("--config") + 1])
    config.write_text(config.read_text() + "  replica_cpus: 0.5\n")  # the head alone fits both replicas
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_rows(run, out, "02", 32)
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)
    finally:
        run.kill()
    deadline = time.monotonic() + 30  # Ray ends the dead driver's actors: no old writer may write on
    while worker_pids(cluster, "ray::WriterActor") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not worker_pids(cluster, "ray::WriterActor")
    before = _written(out, "02")
    assert 32 <= before < FRAMES - 32 and before % CLEAN_RUN_BATCH == 0  # whole batches only

    worker = next(node for node in cluster.list_all_nodes() if node is not cluster.head_node)
    resumed = subprocess.Popen([*command, "--resume"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_rows(resumed, out, "02", before + 16)
        cluster.remove_node(worker, allow_graceful=False)
        stdout, stderr = resumed.communicate(timeout=300)
    finally:
        resumed.kill()
        cluster.add_node(num_cpus=2, node_ip_address=cluster.head_node.node_ip_address)
    assert resumed.returncode == 0, stderr
    assert "on 2 nodes" in stdout and "faults survived: " in stdout, stdout
    assert any(line.startswith("warning: replica ") for line in stderr.splitlines()), stderr
    _assert_same_as_clean(out, clean_run[0])
