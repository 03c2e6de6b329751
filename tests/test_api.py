"""The Python API (issue 33, item 3): one import name, ``anomstream``, with nothing named pipeline,
models, workers or configs at the top of site-packages; ``score`` -> ``open_store`` (an xarray
Dataset along ``frame`` with CF-style attrs) -> ``events`` (a table, empty when there are none)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import numpy as np
import pytest

import anomstream
from anomstream.pipeline.errors import AnomstreamError
from anomstream.pipeline.store import FrameStatus, open_results
from anomstream.pipeline.stream.naive import naive_score


def test_one_import_name_and_nothing_else_at_the_top(tmp_path):
    """Run outside the repo (whose folders are importable from it): what the install holds."""
    probe = ("import importlib.util as u, importlib.metadata as m, sys, anomstream; "
             "print([u.find_spec(n) is None for n in ('pipeline', 'models', 'workers', 'configs')]); "
             "print('torch' in sys.modules, 'ray' in sys.modules, anomstream.__version__ == m.version('anomstream')); "
             "print(sorted({str(path).split('/')[0] for path in m.files('anomstream')}))")
    printed = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    names, imported, files = printed.stdout.splitlines()
    assert names == "[True, True, True, True]"  # none of the repo's folders is a top-level package
    assert imported == "False False True"  # importing the API imports neither torch nor Ray
    assert not set(ast.literal_eval(files)) & {"pipeline", "models", "workers", "configs"}, files  # what pip show -f lists
    assert anomstream.shipped_checkpoint().is_file()


@pytest.fixture(scope="module")
def scored(ray_session, tmp_path_factory, shared_data):
    """The sample clip (Ped2 test video 2: bikes on the walkway) scored through the API."""
    out = tmp_path_factory.mktemp("api") / "clip.zarr"
    clip = anomstream.shipped_checkpoint().parent.parent / "samples" / "ped2_test02.mp4"
    report = anomstream.score([str(clip)], out=out)
    return out, report


def test_a_scored_clip_opens_as_a_dataset_that_describes_itself(scored):
    out, report = scored
    assert list(report.streams) == ["ped2_test02"] and report.streams["ped2_test02"].frames == 180
    assert anomstream.streams(out) == ["ped2_test02"]
    ds = anomstream.open_store(out)
    group = open_results(out)["ped2_test02"]
    assert ds.sizes == {"frame": 180, "y": 128, "x": 128}
    np.testing.assert_array_equal(ds["frame"].values, group["frame_index"][:])
    np.testing.assert_array_equal(ds["time"].values, group["timestamp"][:])  # seconds from the start (a recording)
    np.testing.assert_array_equal(ds["score"].values, group["score"][:])
    assert list(ds.data_vars)[:6] == ["score", "score_raw", "status", "valid", "timestamp", "map"]
    score = ds["score"].attrs
    assert (score["long_name"], score["units"], score["calibration_threshold"], score["false_alarm_rate"],
            score["event_threshold"]) == ("calibrated anomaly score", "1", 3.0, 0.001, 3.0)
    status = ds["status"].attrs
    assert status["flag_meanings"].split() == list(FrameStatus.codes()) and list(status["flag_values"]) == list(range(6))
    assert int((ds["status"] == FrameStatus.SCORED).sum()) == 176  # 4 frames of warm-up (DMAD's 5-frame window)
    assert ds.attrs["model"] == "dmad" and ds.attrs["stream"] == "ped2_test02" and ds.attrs["written"] == 180
    assert json.loads(ds.attrs["calibration"])["threshold"] == 3.0
    assert anomstream.open_store(out, maps=False).data_vars.keys().isdisjoint({"map"})


def test_events_are_a_table_and_an_empty_one_when_there_are_none(scored, tmp_path, shared_data):
    out, _ = scored
    table = anomstream.events(out, "ped2_test02")
    stored = [json.loads(line) for line in (out.with_suffix(".events") / "events.jsonl").read_text().splitlines()
              if json.loads(line)["type"] == "end"]
    assert list(table["event_id"]) == [event["event_id"] for event in stored] and len(table) >= 1
    assert (table["peak_score"] >= 3.0).all() and (table["start_frame"] <= table["peak_frame"]).all()
    # a store without events (the single-process loop writes none)
    plain = tmp_path / "plain.zarr"
    naive_score(str(shared_data / "ped2" / "testing" / "frames" / "01"), str(anomstream.shipped_checkpoint()), plain)
    empty = anomstream.events(plain)
    assert len(empty) == 0 and list(empty.columns) == list(table.columns)
    assert str(empty["event_id"].dtype) == "string" and str(empty["peak_score"].dtype) == "float32"
    ds = anomstream.open_store(plain)
    assert ds.sizes["frame"] == 180 and "calibration_threshold" not in ds["score"].attrs


def test_a_missing_stream_an_existing_store_and_a_missing_input_are_said_in_one_line(scored, tmp_path):
    out, _ = scored
    with pytest.raises(AnomstreamError) as missing:
        anomstream.open_store(out, "nope")
    assert str(missing.value) == f"{out}: no stream 'nope' (streams: 'ped2_test02')"
    with pytest.raises(AnomstreamError) as refused:
        anomstream.score([open_results(out)["ped2_test02"].attrs["source"]], out=out)  # neither overwrite nor resume
    assert str(refused.value).startswith(f"{out}: ")
    report = anomstream.score([str(tmp_path / "missing.mp4")], out=tmp_path / "none.zarr")
    assert [rejection.reason for rejection in report.failed] == [f"{tmp_path / 'missing.mp4'}: no such file or folder"]
