import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.errors import StoreError
from pipeline.store import ResultStore, open_results, result_arrays

ARRAYS = result_arrays((4, 6), ["a"])


def _batch(start, n):
    return {"score": np.arange(start, start + n, dtype=np.float32), "map": np.ones((n, 4, 6), np.float16),
            "frame_index": np.arange(start, start + n), "timestamp": np.arange(start, start + n) / 10.0,
            "valid": np.ones(n, bool), "term_a": np.zeros(n, np.float32)}


def test_preallocated_batches_and_unknown_length_growth(tmp_path):
    store = ResultStore(tmp_path / "s.zarr", {"model": "m"})
    store.open_stream("known", ARRAYS, 8, 20, {"source": "x"})
    store.open_stream("live", ARRAYS, 8, None, {"source": "cam"})
    assert store.root["known"]["map"].shape == (24, 4, 6)
    for start in range(0, 20, 8):
        store.write("known", start, _batch(start, min(8, 20 - start)))
    for start in range(0, 100, 8):
        store.write("live", start, _batch(start, 8))
    store.close_stream("known")
    store.close_stream("live", error="camera stopped")
    root = open_results(tmp_path / "s.zarr")
    np.testing.assert_array_equal(root["known"]["score"][:], np.arange(20))
    assert root["live"]["score"].shape == (104,) and root["live"].attrs["error"] == "camera stopped"
    assert root["known"].attrs["complete"] is True and root["known"]["map"].chunks == (8, 4, 6)
    dataset = xr.open_zarr(tmp_path / "s.zarr", group="known", consolidated=False)
    assert dataset["map"].dims == ("frame", "y", "x") and dataset.sizes["frame"] == 20


def test_existing_store_is_refused_unless_overwrite_or_resume(tmp_path):
    path = tmp_path / "s.zarr"
    store = ResultStore(path, {"model": "m", "checkpoint_sha256": "abc"})
    store.open_stream("v", ARRAYS, 8, 16, {})
    store.write("v", 0, _batch(0, 8))
    with pytest.raises(StoreError, match="s.zarr: store already exists; pass --overwrite"):
        ResultStore(path, {"model": "m"})
    with pytest.raises(StoreError, match="cannot resume: store was written with checkpoint_sha256 'abc'"):
        ResultStore(path, {"model": "m", "checkpoint_sha256": "other"}, mode="resume")
    resumed = ResultStore(path, {"model": "m", "checkpoint_sha256": "abc"}, mode="resume")
    assert resumed.written("v") == 8
    resumed.open_stream("v", ARRAYS, 8, 16, {})
    resumed.write("v", 8, _batch(8, 8))
    resumed.close_stream("v")
    np.testing.assert_array_equal(open_results(path)["v"]["score"][:], np.arange(16))
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
    from pipeline.store import stream_key

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
