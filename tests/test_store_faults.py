"""Stores that a full disk, a second run or a damaged chunk meet (issue 30: kinds 4, 5, 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import CLEAN_RUN_BATCH, REPO, first_frames

from anomstream.pipeline.cli import main

ARRAYS = ("frame_index", "status", "valid", "score_raw", "score", "term_gradient_excess", "term_deformation")


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MB tmpfs (root only; skipped where mounting is not allowed), unmounted at the end."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()})")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_is_one_line_naming_the_store_and_cause_and_resume_completes(ray_session, ped2, clean_run,
                                                                                  small_disk, tmp_path, capfd):
    clip = first_frames(ped2, "02", 120, tmp_path / "input")
    config = tmp_path / "score.yaml"
    config.write_text(f"score:\n  replicas: 2\n  batch_size: {CLEAN_RUN_BATCH}\n  replica_threads: 1\n  flush_s: 0\n")
    out = small_disk / "run.zarr"
    args = ["score", str(clip), "--config", str(config), "--out", str(out), "--quiet"]
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {out}: cannot write the store (No space left on device); what is written is kept: run again with "
        f"--resume"]
    assert "Traceback" not in err and "ray::" not in err and "\x1b[" not in err
    written = zarr.open_group(str(out), mode="r")["02"]
    assert 0 < written.attrs["written"] < 120 and written.attrs["complete"] is False
    np.testing.assert_array_equal(written["frame_index"][:written.attrs["written"]], np.arange(written.attrs["written"]))

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert main(args + ["--resume"]) == 0
    group, reference = zarr.open_group(str(out), mode="r")["02"], zarr.open_group(str(clean_run[0]), mode="r")["02"]
    assert group.attrs["complete"] is True and group.attrs["written"] == 120
    for name in (*ARRAYS, "map"):
        np.testing.assert_array_equal(group[name][:], reference[name][:120], err_msg=name)


def test_an_error_inside_a_ray_worker_is_one_line_without_ray_text():
    from ray.exceptions import RayTaskError

    from anomstream.pipeline.cli import _from_ray
    from anomstream.pipeline.driver.loop import _writing_failed
    from anomstream.pipeline.errors import StoreError

    wrapped = RayTaskError("\x1b[36mray::WriterActor.write()\x1b[39m", "Traceback ...", OSError(5, "Input/output error"))
    assert _from_ray(wrapped) and not _from_ray(ValueError("x"))
    failed = _writing_failed(Path("/s.zarr"), wrapped, live=False)
    assert isinstance(failed, StoreError)
    assert str(failed) == ("/s.zarr: writing failed (OSError: [Errno 5] Input/output error); what is written is kept: "
                           "run again with --resume")
    store_error = RayTaskError("write", "tb", StoreError("/s.zarr: cannot write the store (Read-only file system); what "
                                                        "is written is kept")).as_instanceof_cause()
    assert str(_writing_failed(Path("/s.zarr"), store_error, live=True)) == (
        "/s.zarr: cannot write the store (Read-only file system); what is written is kept: start the run again")


def _lock_file(path: Path, **holder) -> None:
    path.write_text(json.dumps({"host": "other-host", "pid": 4242, "started": time.time() - 60,
                                "heartbeat": time.time(), "token": "theirs", **holder}))


def test_a_second_run_on_a_locked_store_refuses_naming_the_holder(tmp_path):
    from anomstream.pipeline.errors import StoreError
    from anomstream.pipeline.store.lock import StoreLock

    out = tmp_path / "runs" / "a.zarr"
    with StoreLock(out) as first:
        lock = Path(first.location)
        assert lock == tmp_path / "runs" / "a.zarr.lock" and lock.is_file()
        with pytest.raises(StoreError) as refused:
            StoreLock(out).acquire()
        message = str(refused.value)
        assert message.startswith(f"{out}: another run is writing this store (process {os.getpid()} on ")
        assert message.endswith(f"s ago); wait for it to end, or remove {lock} if that run is gone")
    assert not lock.exists()  # released
    with StoreLock(out):  # free again
        pass


def test_a_lock_whose_holder_is_gone_is_taken_over_with_a_warning(tmp_path, capsys):
    import socket

    from anomstream.pipeline.errors import StoreError
    from anomstream.pipeline.store.lock import StoreLock, _boot_id, _pid_namespace

    out, lock = tmp_path / "a.zarr", tmp_path / "a.zarr.lock"
    dead = subprocess.Popen(["true"])
    dead.wait()
    here = {"host": socket.gethostname(), "boot": _boot_id(), "pid_namespace": _pid_namespace()}
    _lock_file(lock, pid=dead.pid, **here)  # kill -9 of a run on this machine

    with StoreLock(out) as taken:
        assert taken.file.read()["token"] == taken.token
    assert "warning: " + str(out) + ": taking over the lock of a run that is gone (process " in capsys.readouterr().err
    _lock_file(lock, heartbeat=time.time() - 600)  # a driver on another machine, silent for 10 minutes
    with StoreLock(out, stale_s=120):
        pass
    _lock_file(lock)  # another machine's run, alive
    with pytest.raises(StoreError, match=r"another run is writing this store \(process 4242 on other-host, started "):
        StoreLock(out).acquire()
    assert json.loads(lock.read_text())["token"] == "theirs"  # left as it was
    _lock_file(lock, pid=os.getpid(), heartbeat=time.time(), **here)  # this very process: a pid reused after a restart
    with StoreLock(out):
        pass
    lock.write_text("")  # a run that has just created its lock and not yet written it (fresh): left alone
    with pytest.raises(StoreError, match=r"another run is writing this store \(holder unknown\)"):
        StoreLock(out).acquire()
    os.utime(lock, (time.time() - 600, time.time() - 600))  # ... an empty lock ten minutes old: gone
    with StoreLock(out):
        pass
    assert not lock.exists() and not list(tmp_path.glob("a.zarr.lock.*"))  # no temporary file left beside it


def test_the_holder_keeps_its_heartbeat_fresh(tmp_path):
    from anomstream.pipeline.store.lock import StoreLock

    with StoreLock(tmp_path / "a.zarr", heartbeat_s=0.05) as held:
        first = held.file.read()["heartbeat"]
        time.sleep(0.3)
        assert held.file.read()["heartbeat"] > first and held.file.read()["started"] == pytest.approx(first, abs=1)


def test_overwrite_beside_a_running_run_refuses_and_the_run_keeps_its_stream(ray_session, ped2, tmp_path, capsys):
    """Two runs on one store: today's `--overwrite` beside a running run made both exit 0 with the
    first run's stream gone."""
    clip = first_frames(ped2, "03", 96, tmp_path / "input")
    out = tmp_path / "shared.zarr"
    first = subprocess.Popen([sys.executable, "-m", "anomstream.pipeline.cli", "score", str(clip), "--out", str(out), "--quiet",
                              "--replicas", "1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "shared.zarr.lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        capsys.readouterr()
        assert main(["score", str(clip), "--out", str(out), "--overwrite", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out}: another run is writing this store (process {first.pid} on ")
        stdout, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    group = zarr.open_group(str(out), mode="r")["03"]
    assert group.attrs["complete"] is True and group.attrs["written"] == 96
    assert not (tmp_path / "shared.zarr.lock").exists()


ROWS = 2100  # three chunks of the per-frame arrays (1,024 rows each)


def _damaged_store_fixture(tmp_path: Path, gap: slice | None = None, maps_every: int = 1) -> Path:
    """A stream ``01_0014`` of ROWS rows written as the writer writes them: 4 warm-up rows, the rest
    scored (``gap``: rows of a source gap instead, not scored), small maps chunked by 16 rows."""
    from anomstream.pipeline.store import FrameStatus, ResultStore, result_arrays

    path = tmp_path / "s.zarr"
    store = ResultStore(path, {"model": "dmad"})
    store.open_stream("01_0014", result_arrays((8, 8), ["a"]), 16, ROWS, {"source": "x", "maps_every": maps_every})
    status = np.full(ROWS, FrameStatus.SCORED, np.uint8)
    status[:4] = FrameStatus.WARMUP
    if gap is not None:
        status[gap] = FrameStatus.SOURCE_GAP
    scored = status == FrameStatus.SCORED
    score = np.where(scored, np.linspace(0, 1, ROWS), np.nan).astype(np.float32)
    rows = {"score": score, "score_raw": score, "term_a": score, "valid": scored, "status": status,
            "frame_index": np.arange(ROWS), "timestamp": np.arange(ROWS) / 10.0,
            "map": np.where(scored[:, None, None], np.float16(0.5), np.float16(np.nan)) * np.ones((1, 8, 8), np.float16)}
    for first in range(0, ROWS, 16):
        store.write("01_0014", first, {name: data[first:first + 16] for name, data in rows.items()})
    store.close_stream("01_0014")
    return path


def test_a_chunk_missing_below_written_is_named_by_stream_array_and_rows(tmp_path):
    from anomstream.pipeline.store import open_results
    from anomstream.pipeline.store.integrity import DamagedStoreError

    path = _damaged_store_fixture(tmp_path)
    open_results(path)  # whole: no complaint
    (path / "01_0014" / "score" / "c" / "1").unlink()
    with pytest.raises(DamagedStoreError) as damaged:
        open_results(path)
    assert str(damaged.value) == (f"{path}: stream 01_0014: array score rows 1024-2047 of the 2100 written are missing "
                                  f"from the store: the store is damaged; score the stream again into a new store (or "
                                  f"--overwrite)")
    (path / "01_0014" / "score" / "c" / "1").write_bytes(b"")  # there, but not a chunk any codec reads
    with pytest.raises(DamagedStoreError, match=r"array score rows 1024-2047 of the 2100 written are unreadable \("):
        open_results(path)
    whole = _damaged_store_fixture(tmp_path / "maps")
    for key in ("map/c/3/0/0", "map/c/9/0/0"):
        (whole / "01_0014" / key).unlink()
    open_results(whole)  # maps are checked for readers of maps only
    with pytest.raises(DamagedStoreError, match=r"array map rows 48-63 \(and 1 more chunk\(s\)\) of the 2100 written "
                                                r"are missing from the store"):
        open_results(whole, maps=True)


def test_an_unreadable_chunk_is_named_and_chunks_zarr_never_stored_are_not_damage(tmp_path):
    from anomstream.pipeline.store import open_results
    from anomstream.pipeline.store.integrity import DamagedStoreError

    path = _damaged_store_fixture(tmp_path / "a")
    (path / "01_0014" / "status" / "c" / "2").write_bytes(b"\x00garbage")
    with pytest.raises(DamagedStoreError, match=r"^.*: stream 01_0014: array status rows 2048-2099 of the 2100 written "
                                                r"are unreadable \(.+\): the store is damaged; "):
        open_results(path)
    # a source gap over rows 1024-2047: their score, valid and map chunks equal the fill value, so
    # zarr stores none of them: that is a whole store
    gapped = _damaged_store_fixture(tmp_path / "b", gap=slice(1024, 2048))
    assert not (gapped / "01_0014" / "score" / "c" / "1").exists()
    open_results(gapped)
    # maps kept for every 100th frame only: the other map chunks are not expected
    sparse = _damaged_store_fixture(tmp_path / "c", maps_every=100)
    open_results(sparse, maps=True)
    (sparse / "01_0014" / "map" / "c" / "6" / "0" / "0").unlink()  # frame 100's
    with pytest.raises(DamagedStoreError, match=r"array map rows 96-111 of the 2100 written are missing"):
        open_results(sparse, maps=True)


def test_eval_and_resume_name_the_damage_instead_of_using_fill_values(tmp_path, capsys):
    from anomstream.pipeline.driver.resume import resume_refusal
    from anomstream.pipeline.store import open_results
    from anomstream.pipeline.store.results import stored_stream

    path = _damaged_store_fixture(tmp_path)
    (path / "01_0014" / "frame_index" / "c" / "0").unlink()
    labels = tmp_path / "labels" / "test_frame_mask"
    labels.mkdir(parents=True)
    np.save(labels / "01_0014.npy", (np.arange(ROWS) > 1500).astype(np.uint8))
    assert main(["eval", str(path), "--dataset", "shanghaitech", "--labels", str(labels)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (f"error: {path}: stream 01_0014: array frame_index rows 0-1023 of the 2100 written are "
                                 f"missing from the store: the store is damaged; score the stream again into a new "
                                 f"store (or --overwrite)\n")
    stored = stored_stream(open_results(path, check=False), "01_0014", path)
    assert stored.written == ROWS and stored.damage == err[len("error: "):-1]
    refused = resume_refusal(stored._replace(source=None, fingerprint=None), _Named("01_0014"), None)
    assert refused == stored.damage


class _Named:
    """The least of a Source that resume_refusal reads."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id

    def describe(self) -> str:
        return self.stream_id


def _rows(first: int, count: int) -> dict[str, np.ndarray]:
    """A batch of scored rows as a replica answers them (no terms), maps 8 x 8."""
    return {"score": np.full(count, 0.5, np.float32), "score_raw": np.full(count, 0.5, np.float32),
            "map": np.zeros((count, 8, 8), np.float16), "frame_index": np.arange(first, first + count),
            "timestamp": np.full(count, np.nan), "valid": np.ones(count, bool), "status": np.zeros(count, np.uint8)}


def test_a_writer_refuses_the_rows_and_close_of_a_stream_whose_opening_failed_part_way(tmp_path, monkeypatch):
    """The driver sends a stream's writes without waiting for its opening; when the opening fails
    after the store opened the stream (here the live view's state, an I/O error), the writer must
    not put those rows on disk nor mark the stream complete. Opened again, it is written."""
    import anomstream.workers.writer as writer_module
    from anomstream.pipeline.errors import StoreError
    from anomstream.pipeline.store import result_arrays

    path = tmp_path / "s.zarr"
    writer = writer_module.WriterActor.__ray_metadata__.modified_class()
    writer.open(writer_module.WriterConfig(str(path), {"model": "test"}, "overwrite", view=True))
    arrays, attrs = result_arrays((8, 8), []), {"source": "a.avi", "live": False}

    def broken_view():
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(writer_module, "StreamView", broken_view)
    with pytest.raises(StoreError, match=r"cannot write the store \(Input/output error\)"):
        writer.open_stream("a", arrays, 4, 8, attrs)
    refusal = f"{path}: stream a is not open in this writer (its opening failed); its rows are not written"
    for call in (lambda: writer.write("a", 0, _rows(0, 4)), lambda: writer.close_stream("a")):
        with pytest.raises(StoreError) as refused:
            call()
        assert str(refused.value) == refusal
    writer.flush_all()
    group = zarr.open_group(str(path), mode="r")["a"]
    assert group.attrs["written"] == 0 and group.attrs["complete"] is False
    assert np.all(group["status"][:] == 255)  # no row on disk

    monkeypatch.undo()
    writer.open_stream("a", arrays, 4, 8, attrs)
    writer.write("a", 0, _rows(0, 4))
    writer.write("a", 4, _rows(4, 4))
    writer.close_stream("a")
    group = zarr.open_group(str(path), mode="r")["a"]
    assert group.attrs["written"] == 8 and group.attrs["complete"] is True
    assert group["frame_index"][:].tolist() == list(range(8))
