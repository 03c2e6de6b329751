"""Placement that never hangs (issue 31): replicas asking for GPU fractions fit the GPUs or the run
refuses before it starts. The GPU is a resource label of a loopback Ray node (`num_gpus=1`): the
replicas placed there still score on this machine's CPU."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import zarr
from conftest import REPO, first_frames

from anomstream.pipeline.config import ScoreSection
from anomstream.pipeline.driver.local_cluster import start_local_cluster
from anomstream.pipeline.driver.run import check_gpu_placement
from anomstream.pipeline.errors import AnomstreamError


@pytest.fixture(scope="module")
def gpu_node():
    """One loopback node with 2 CPUs that reports 1 GPU."""
    node = start_local_cluster(nodes=1, cpus_per_node=2, gpus_per_node=1)
    yield node
    node.shutdown()


@pytest.mark.parametrize(("replicas", "fraction", "gpus", "fits"), [
    (2, 0.5, [1.0], None), (3, 0.5, [1.0], 2), (4, 0.5, [1.0, 1.0], None), (3, 0.6, [1.0, 1.0], 2),
    (8, 0.5, [0.0], None),  # no GPU: CPU replicas
])
def test_replicas_that_do_not_fit_the_gpus_are_refused_in_one_line(replicas, fraction, gpus, fits):
    settings = ScoreSection(replicas=replicas, gpu_fraction=fraction)
    if fits is None:
        check_gpu_placement(settings, gpus)
        return
    with pytest.raises(AnomstreamError) as refused:
        check_gpu_placement(settings, gpus)
    assert str(refused.value).startswith(f"--replicas {replicas}: the cluster's {sum(gpus):g} GPU(s) hold {fits} "
                                         f"replica(s) of score.gpu_fraction {fraction:g}; pass --replicas {fits} or "
                                         f"fewer, or a smaller score.gpu_fraction (e.g. ")
    check_gpu_placement(settings, gpus, gpu=False)  # a backend without GPUs: CPU replicas, nothing to refuse


def test_a_fraction_no_node_can_give_is_refused():
    with pytest.raises(AnomstreamError) as refused:
        check_gpu_placement(ScoreSection(replicas=2, gpu_fraction=1.0), [0.5, 0.5])
    assert str(refused.value) == ("score.gpu_fraction 1: no node of the cluster has that much of one GPU (GPUs per "
                                  "node: 0.5, 0.5); pass a smaller score.gpu_fraction")


def test_three_replicas_on_a_one_gpu_node_end_in_seconds(gpu_node, ped2, tmp_path):
    """`--replicas 3` with the default gpu_fraction 0.5 on a node with 1 GPU: once it waited for ever
    on the third replica; now it refuses before it starts. Two replicas fit and the run completes."""
    clip = first_frames(ped2, "01", 24, tmp_path / "input")
    command = [sys.executable, "-m", "anomstream.pipeline.cli", "score", str(clip), "--address", gpu_node.address, "--quiet",
               "--backend", "torch"]
    started = time.monotonic()
    refused = subprocess.run([*command, "--out", str(tmp_path / "three.zarr"), "--replicas", "3"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == ("error: --replicas 3: the cluster's 1 GPU(s) hold 2 replica(s) of score.gpu_fraction "
                              "0.5; pass --replicas 2 or fewer, or a smaller score.gpu_fraction (e.g. 0.33)\n")
    assert time.monotonic() - started < 60
    placed = subprocess.run([*command, "--out", str(tmp_path / "two.zarr"), "--replicas", "2"], cwd=REPO,
                            capture_output=True, text=True, timeout=240)
    assert placed.returncode == 0, placed.stderr
    assert zarr.open_group(str(tmp_path / "two.zarr"), mode="r")["01"].attrs["written"] == 24
