"""Stores on object storage: ``--out s3://...`` against moto's S3-compatible server on 127.0.0.1
(started by the test, stopped by its PID), read back with zarr and obstore alone."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr
from conftest import CLEAN_RUN_BATCH, REPO, first_frames
from servers import LoopbackS3

ARRAYS = ("frame_index", "status", "valid", "score_raw", "score", "term_gradient_excess", "term_deformation", "map")


@pytest.fixture(scope="module")
def s3():
    server = LoopbackS3()
    yield server
    server.stop()


@pytest.fixture
def s3_environment(s3, monkeypatch):
    """This process's environment pointed at the loopback server, with a bucket ``runs``."""
    import boto3

    for key, value in s3.environment.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    if "runs" not in [bucket["Name"] for bucket in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket="runs")
    return s3.environment


def test_a_store_on_s3_holds_what_a_local_store_holds(s3_environment, clean_run, ped2, shipped_checkpoint, tmp_path,
                                                       monkeypatch):
    """The first 40 frames of Ped2 clip 01 scored into ``s3://runs/jobs/a.zarr`` (the writer actor
    gets the credentials of this process): every array equals the local clean run's first 40 rows,
    the objects are in the bucket, and the readers take the URL."""
    from obstore import list as list_objects
    from obstore.store import from_url
    from zarr.storage import ObjectStore

    from anomstream.pipeline.config import ScoreSection
    from anomstream.pipeline.driver.plan import RunPlan
    from anomstream.pipeline.driver.run import score_sources
    from anomstream.pipeline.store import open_results

    monkeypatch.chdir(tmp_path)  # the events folder of a store on object storage is made here
    clip = first_frames(ped2, "01", 40, tmp_path)
    url = "s3://runs/jobs/a.zarr"
    settings = ScoreSection(replicas=2, batch_size=CLEAN_RUN_BATCH, replica_threads=1)
    report = score_sources(RunPlan(specs=[str(clip)], checkpoint=str(shipped_checkpoint), out=url, settings=settings,
                                   progress=False))
    assert report.streams["01"].frames == 40 and report.streams["01"].error is None

    keys = {entry["path"] for chunk in list_objects(from_url("s3://runs/jobs")) for entry in chunk}
    assert {"a.zarr/zarr.json", "a.zarr/01/zarr.json", "a.zarr/01/score/zarr.json"} <= keys
    group = zarr.open_group(ObjectStore(from_url(url), read_only=True), mode="r")["01"]
    reference = zarr.open_group(str(clean_run[0]), mode="r")["01"]
    assert group.attrs["complete"] is True and group.attrs["written"] == 40
    for name in ARRAYS:
        np.testing.assert_array_equal(group[name][:40], reference[name][:40], err_msg=name)
    assert (tmp_path / "a.events" / "events.jsonl").exists()

    assert open_results(url).attrs["checkpoint_sha256"] == open_results(clean_run[0]).attrs["checkpoint_sha256"]
    import anomstream  # the Python API reads the URL as it reads a path

    dataset = anomstream.open_store(url)
    assert dataset.sizes["frame"] == 40 and dataset.attrs["stream"] == "01"
    np.testing.assert_array_equal(dataset["score"].values, reference["score"][:40])
    table = anomstream.events(url)
    ended = [json.loads(line)["event_id"] for line in (tmp_path / "a.events" / "events.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "end"]
    assert list(table["event_id"]) == ended and list(table.columns) == list(anomstream.events(clean_run[0], "01").columns)


@pytest.mark.parametrize("url, message", [
    ("ftp://runs/a.zarr", "ftp://runs/a.zarr: unknown store scheme 'ftp://'; a store is a path or an object-store URL "
                          "(s3://, gs://, az://)"),
    ("s3://runs", "s3://runs: name the store inside the bucket, e.g. s3://runs/run.zarr"),
])
def test_a_store_url_anomstream_cannot_write_is_refused(url, message):
    from anomstream.pipeline.errors import StoreError
    from anomstream.pipeline.store import check_target

    with pytest.raises(StoreError) as refused:
        check_target(url, "create")
    assert str(refused.value) == message


def test_a_missing_bucket_is_one_line_before_any_work(s3_environment, ped2):
    """`score --out` into a bucket that is not there: exit 2, one line, before Ray starts."""
    import os

    url = "s3://no-such-bucket/a.zarr"
    command = [sys.executable, "-m", "anomstream.pipeline.cli", "score", str(ped2 / "testing" / "frames" / "01"), "--out", url,
               "--quiet"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **s3_environment})
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {url}: cannot list the object store (Generic S3 error: ")
    assert done.stderr.rstrip().endswith("check the bucket, the endpoint and the credentials in the environment "
                                         "(AWS_*, GOOGLE_*, AZURE_*)") and done.stderr.count("\n") == 1, done.stderr
    assert "Ray" not in done.stderr and not done.stdout


def test_a_store_on_s3_has_one_run_at_a_time(s3_environment):
    """The lock is an object beside the store's prefix, created by a conditional put."""
    from obstore import list as list_objects
    from obstore.store import from_url

    from anomstream.pipeline.errors import StoreError
    from anomstream.pipeline.store.lock import StoreLock

    with StoreLock("s3://runs/locks/b.zarr"):
        keys = {entry["path"] for chunk in list_objects(from_url("s3://runs/locks")) for entry in chunk}
        assert keys == {"b.zarr.lock"}
        with pytest.raises(StoreError, match=r"^s3://runs/locks/b.zarr: another run is writing this store \(process "):
            StoreLock("s3://runs/locks/b.zarr").acquire()
    assert not [entry for chunk in list_objects(from_url("s3://runs/locks")) for entry in chunk]
    import json
    import time

    import obstore

    gone = {"host": "other-host", "pid": 7, "started": 0, "heartbeat": time.time() - 600, "token": "theirs"}
    obstore.put(from_url("s3://runs/locks"), "b.zarr.lock", json.dumps(gone).encode())
    with StoreLock("s3://runs/locks/b.zarr") as taken:  # a driver gone silent on another machine: taken over
        held = json.loads(bytes(obstore.get(from_url("s3://runs/locks"), "b.zarr.lock").bytes()))
        assert held["token"] == taken.token
