import numpy as np
import pytest
import xarray as xr
import zarr

from anomstream.pipeline.errors import StoreError
from anomstream.pipeline.store import STORE_FORMAT, ResultStore, open_results, result_arrays

ARRAYS = result_arrays((4, 6), ["a"])


def _batch(start, n):
    return {"score": np.arange(start, start + n, dtype=np.float32), "map": np.ones((n, 4, 6), np.float16),
            "frame_index": np.arange(start, start + n), "timestamp": np.arange(start, start + n) / 10.0,
            "valid": np.ones(n, bool), "term_a": np.zeros(n, np.float32)}


def test_preallocated_batches_and_unknown_length_growth(tmp_path):
    store = ResultStore(tmp_path / "s.zarr", {"model": "m"})
    store.open_stream("known", ARRAYS, 8, 20, {"source": "x"})
    store.open_stream("live", ARRAYS, 8, None, {"source": "cam"})
    assert store.root["known"]["map"].shape == (20, 4, 6)
    for start in range(0, 20, 8):
        store.write("known", start, _batch(start, min(8, 20 - start)))
    assert store.written("known") == 0  # rows wait in memory (FLUSH_S, FLUSH_ROWS)...
    store.flush("known")
    assert store.written("known") == 20  # ...until flushed
    for start in range(0, 100, 8):
        store.write("live", start, _batch(start, 8))
    store.close_stream("known")
    store.close_stream("live", error="camera stopped")
    root = open_results(tmp_path / "s.zarr")
    np.testing.assert_array_equal(root["known"]["score"][:], np.arange(20))
    assert root["live"]["score"].shape == (104,) and root["live"].attrs["error"] == "camera stopped"
    assert root["known"].attrs["complete"] is True and root["known"]["map"].chunks == (8, 4, 6)
    assert root["known"]["score"].chunks == (1024,)  # per-frame scalars: one chunk per 1,024 rows
    dataset = xr.open_zarr(tmp_path / "s.zarr", group="known", consolidated=False)
    assert dataset["map"].dims == ("frame", "y", "x") and dataset.sizes["frame"] == 20


def test_rows_reach_the_disk_after_flush_rows_or_a_live_streams_flush_seconds(tmp_path):
    import anomstream.pipeline.store.results as results

    store = ResultStore(tmp_path / "s.zarr", {"model": "m"})
    store.open_stream("v", ARRAYS, 8, None, {"live": True})
    store.open_stream("r", ARRAYS, 8, None, {})  # a recording
    for start in range(0, results.FLUSH_ROWS, 8):
        assert store.written("v") == store.written("r") == 0
        store.write("v", start, _batch(start, 8))
        store.write("r", start, _batch(start, 8))
    assert store.written("v") == store.written("r") == results.FLUSH_ROWS  # the 256th row made them due
    store.write("v", results.FLUSH_ROWS, _batch(results.FLUSH_ROWS, 8))
    store.write("r", results.FLUSH_ROWS, _batch(results.FLUSH_ROWS, 8))
    store.flush_s = 1e-9
    store.flush_due()  # what a live run's driver calls while a stream waits for frames
    assert store.written("v") == results.FLUSH_ROWS + 8
    assert store.written("r") == results.FLUSH_ROWS  # a recording's rows wait for FLUSH_ROWS or its end...
    store.flush_s = 0.0
    store.flush_due()
    assert store.written("r") == results.FLUSH_ROWS + 8  # ...unless flush_s is 0
    for stream_id in ("v", "r"):
        np.testing.assert_array_equal(open_results(tmp_path / "s.zarr")[stream_id]["score"][:results.FLUSH_ROWS + 8],
                                      np.arange(results.FLUSH_ROWS + 8))


def test_existing_store_is_refused_unless_overwrite_or_resume(tmp_path):
    path = tmp_path / "s.zarr"
    store = ResultStore(path, {"model": "m", "checkpoint_sha256": "abc", "calibration": {"data": "a", "threshold": 3}})
    store.open_stream("v", ARRAYS, 8, 16, {})
    store.write("v", 0, _batch(0, 8))
    store.write("v", 8, _batch(8, 8))
    store.flush("v")
    store.write("v", 16, _batch(16, 8))  # lost with its process: never flushed
    with pytest.raises(StoreError, match="s.zarr: store already exists; pass --overwrite"):
        ResultStore(path, {"model": "m"})
    with pytest.raises(StoreError, match="cannot resume: store was written with checkpoint_sha256 'abc'"):
        ResultStore(path, {"model": "m", "checkpoint_sha256": "other"}, mode="resume")
    with pytest.raises(StoreError, match=r"^.*s.zarr: cannot resume: store was written with another calibration "
                                         r"\(data, threshold differ\); score into another store, or --overwrite$"):
        ResultStore(path, {"model": "m", "checkpoint_sha256": "abc", "calibration": {"data": "b", "threshold": 2}},
                    mode="resume")
    resumed = ResultStore(path, {"model": "m", "checkpoint_sha256": "abc"}, mode="resume")
    assert resumed.written("v") == 16
    resumed.open_stream("v", ARRAYS, 8, 24, {})
    resumed.write("v", 16, _batch(16, 8))
    resumed.close_stream("v")
    np.testing.assert_array_equal(open_results(path)["v"]["score"][:], np.arange(24))
    assert ResultStore(path, {"model": "m"}, mode="overwrite").written("v") == 0


def test_store_from_another_version_is_refused(tmp_path):
    path = tmp_path / "old.zarr"
    zarr.open_group(str(path), mode="w").attrs["format"] = "anomstream-store/0"
    with pytest.raises(StoreError, match="old.zarr: store format 'anomstream-store/0' is not"):
        ResultStore(path, {}, mode="resume")
    with pytest.raises(StoreError, match="not an anomstream store"):
        open_results(path)


@pytest.mark.parametrize("name", [".", "..", "zarr.json", "__meta", "a/b", "x" * 300, "é" * 100, "50% off? #1"])
def test_every_stream_name_becomes_a_group_the_store_holds(tmp_path, name):
    from anomstream.pipeline.store import stream_key

    key = stream_key(name)
    assert len(key.encode()) <= 120 and "/" not in key
    store = ResultStore(tmp_path / "s.zarr", {"model": "m"})
    store.open_stream(key, ARRAYS, 8, 4, {"source": name})
    store.write(key, 0, _batch(0, 4))
    store.close_stream(key)
    group = open_results(tmp_path / "s.zarr")[key]
    assert group.attrs["source"] == name and group.attrs["written"] == 4
    assert stream_key(name) == key and (name == key) == (name in ("a", "50% off? #1"))


def test_overwrite_replaces_stores_only(tmp_path):
    folder = tmp_path / "holiday"
    folder.mkdir()
    (folder / "beach.mov").write_bytes(b"not ours")
    with pytest.raises(StoreError, match=r"holiday: exists and is not an anomstream store; --overwrite replaces stores only"):
        ResultStore(folder, {"model": "m"}, mode="overwrite")
    assert (folder / "beach.mov").read_bytes() == b"not ours"
    ResultStore(tmp_path / "s.zarr", {"model": "m"})
    ResultStore(tmp_path / "s.zarr", {"model": "m"}, mode="overwrite")  # one of ours: replaced


@pytest.mark.parametrize("every", [0, 1, 16])
def test_map_retention_keeps_every_nth_map_and_stores_no_empty_chunk(tmp_path, every):
    """A live store keeping the map of every 16th frame: the others are NaN, their chunks (8 frames)
    are not written at all; scores are all kept."""
    store = ResultStore(tmp_path / "r.zarr", {"model": "m"})
    store.open_stream("cam", ARRAYS, 8, None, {"source": "cam", "live": True, "maps_every": every})
    for start in range(0, 64, 8):
        store.write("cam", start, _batch(start, 8))
    store.close_stream("cam")
    group = open_results(tmp_path / "r.zarr")["cam"]
    maps = group["map"][:]
    kept = np.isfinite(maps).all(axis=(1, 2))
    expected = np.arange(64) % every == 0 if every else np.zeros(64, bool)
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_array_equal(group["score"][:], np.arange(64))
    chunk_files = [p for p in (tmp_path / "r.zarr" / "cam" / "map").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(chunk_files) == {0: 0, 1: 8, 16: 4}[every]


def test_rotated_live_store_splits_rows_by_capture_period(tmp_path):
    """Periods of 10 s: rows captured at t = 1001 .. 1034 land in four stores; frame_index goes on
    across them, each store's rows start at 0, each period's stream is closed and names the next."""
    from anomstream.pipeline.store.rotation import RotatingStore, period_path

    path = tmp_path / "live.zarr"
    store = RotatingStore(path, {"model": "m"}, "create", period_s=10, now=1000.0)
    store.open_stream("cam", ARRAYS, 8, None, {"source": "cam", "live": True})
    for start in range(0, 34, 5):
        n = min(5, 34 - start)
        rows = _batch(start, n)
        rows["timestamp"] = 1001.0 + np.arange(start, start + n)
        rows["status"] = np.zeros(n, np.uint8)
        store.write("cam", start, rows)
    store.add_gaps("cam", [{"start": 1033.5, "end": 1034.0, "kind": "stall"}])
    store.close_stream("cam", stopped=True)
    names = [period_path(path, 10, t).name for t in (1000, 1010, 1020, 1030)]
    assert names == ["live-19700101T001640.zarr", "live-19700101T001650.zarr", "live-19700101T001700.zarr",
                     "live-19700101T001710.zarr"]
    groups = [open_results(tmp_path / name)["cam"] for name in names]
    assert [g["frame_index"].shape[0] for g in groups] == [9, 10, 10, 5]
    np.testing.assert_array_equal(np.concatenate([g["frame_index"][:] for g in groups]), np.arange(34))
    np.testing.assert_array_equal(np.concatenate([g["timestamp"][:] for g in groups]), 1001.0 + np.arange(34))
    assert [g.attrs.get("continues_in") for g in groups] == [*names[1:], None]
    assert all(g.attrs["complete"] for g in groups) and groups[-1].attrs["stopped"] is True
    assert [g.attrs["frame_counts"]["scored"] for g in groups] == [9, 10, 10, 5]
    assert groups[-1].attrs["gaps"] == [{"start": 1033.5, "end": 1034.0, "kind": "stall"}]
    assert groups[0].attrs["gaps"] == []


def test_rotation_files_each_streams_rows_by_its_own_capture_time(tmp_path):
    """Two streams, one lagging: the lagging stream's rows of the first period still go to the first
    store after the other stream moved on; a period store whose name is taken gets a suffix."""
    from anomstream.pipeline.store.rotation import RotatingStore, period_path

    path = tmp_path / "live.zarr"
    taken = period_path(path, 10, 1010)
    taken.mkdir()
    (taken / "other run").write_text("x")
    store = RotatingStore(path, {"model": "m"}, "create", period_s=10, now=1000.0)
    for stream_id in ("fast", "slow"):
        store.open_stream(stream_id, ARRAYS, 8, None, {"source": stream_id, "live": True})

    def rows(start, times):
        batch = _batch(start, len(times))
        batch["timestamp"], batch["status"] = np.array(times, float), np.zeros(len(times), np.uint8)
        return batch

    store.write("fast", 0, rows(0, [1008.0, 1009.0, 1011.0, 1012.0]))  # crosses into the second period
    store.write("slow", 0, rows(0, [1007.0, 1008.5, 1009.5]))  # late, still the first period
    store.write("slow", 3, rows(3, [1010.5]))
    for stream_id in ("fast", "slow"):
        store.close_stream(stream_id, stopped=True)
    first, second = open_results(period_path(path, 10, 1000)), open_results(taken.with_name("live-19700101T001650-1.zarr"))
    np.testing.assert_array_equal(first["slow"]["timestamp"][:], [1007.0, 1008.5, 1009.5])
    np.testing.assert_array_equal(second["slow"]["timestamp"][:], [1010.5])
    np.testing.assert_array_equal(first["fast"]["frame_index"][:], [0, 1])
    np.testing.assert_array_equal(second["fast"]["frame_index"][:], [2, 3])
    assert first["slow"].attrs["continues_in"] == "live-19700101T001650-1.zarr" and (taken / "other run").exists()


def test_resumed_stream_counts_the_rows_already_on_disk(tmp_path):
    path = tmp_path / "c.zarr"
    store = ResultStore(path, {"model": "m"})
    store.open_stream("v", ARRAYS, 8, 24, {"source": "v"})
    first = _batch(0, 8)
    first["status"] = np.array([1, 1, 1, 1, 0, 0, 0, 0], np.uint8)
    store.write("v", 0, first)
    gap = {"start": 0.2, "end": 0.4, "kind": "source_gap"}
    store.add_gaps("v", [gap])
    store.flush("v")  # then the run dies
    resumed = ResultStore(path, {"model": "m"}, mode="resume")
    resumed.open_stream("v", ARRAYS, 8, 24, {"source": "v"})
    more = _batch(8, 8)
    more["status"] = np.zeros(8, np.uint8)
    resumed.write("v", 8, more)
    later = {"start": 1.2, "end": 1.3, "kind": "source_gap"}
    resumed.add_gaps("v", [gap, later])  # the recording decoded again from its start reports the first gap again
    resumed.close_stream("v")
    assert open_results(path)["v"].attrs["frame_counts"]["scored"] == 12
    assert open_results(path)["v"].attrs["frame_counts"]["warmup"] == 4
    assert open_results(path)["v"].attrs["gaps"] == [gap, later]


def test_a_reader_beside_a_writer_creating_an_array_sees_no_warning(tmp_path):
    """A live store read while its writer creates an array or a stream (its folder there, its
    zarr.json not yet): the reader lists them without zarr's "not recognized as a component" warning."""
    import warnings

    from anomstream.pipeline.store.integrity import check_stream

    root = zarr.open_group(tmp_path / "live.zarr", mode="w")
    root.attrs["format"] = STORE_FORMAT
    stream = root.create_group("cam")
    stream.create_array("frame_index", shape=(0,), chunks=(32,), dtype="int64")
    (tmp_path / "live.zarr" / "cam" / "term_new" / "c").mkdir(parents=True)  # an array mid-creation
    (tmp_path / "live.zarr" / "cam2" / "score").mkdir(parents=True)  # a stream mid-creation
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_stream(zarr.open_group(tmp_path / "live.zarr", mode="r")["cam"], "cam", tmp_path / "live.zarr")
        open_results(tmp_path / "live.zarr")  # lists the streams, checks each
