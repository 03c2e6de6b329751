"""A stored stream as an ``xarray.Dataset`` that describes itself, and its events as a table: what
``anomstream.open_store`` and ``anomstream.events`` give (docs/python.md).

The Dataset holds the rows written (``written``), along the dimension ``frame`` whose coordinate is
each row's frame index (a row is a frame the source delivered, in order; an index may skip where a
frame could not be read), with ``time`` beside it (capture time: UTC for live streams, seconds
from the start of the recording otherwise). Variables carry CF-style attrs (``long_name``,
``units``; ``flag_values`` / ``flag_meanings`` on ``status``); ``score`` says what it is (the
calibration's ``-log10 p``, its threshold and false-alarm rate, or the model's raw score). The
Dataset's attrs are the stream's own and the run's (model, checkpoint, calibration, event rule),
so one stream opened alone still says which model and threshold made it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import AnomstreamError
from .accounting import FrameStatus
from .location import is_url, zarr_store
from .results import EVENT_COLUMNS, open_results, read_events

if TYPE_CHECKING:
    import pandas
    import xarray

RUN_ATTRS = {"model": "model", "checkpoint": "checkpoint", "checkpoint_sha256": "checkpoint_sha256",
             "score_kind": "score_kind", "calibration": "calibration", "events": "event_rule",
             "term_weights": "term_weights", "window_length": "window_length", "backend": "backend",
             "anomstream_version": "anomstream_version"}  # the run's attrs a stream's Dataset carries (as named)
ORDER = ("score", "score_raw", "status", "valid", "timestamp", "map")


def stream_names(path: str | Path) -> list[str]:
    """The streams of a store (its groups' names, as stored), sorted."""
    return _names(open_results(path, check=False))


def _names(root: Any) -> list[str]:
    return sorted(name for name, _ in root.groups())


def _choose(path: str | Path, stream: str | None, names: list[str]) -> str:
    """``stream``, or the store's only one; AnomstreamError naming the store otherwise."""
    if stream is None:
        if len(names) == 1:
            return names[0]
        listed = ", ".join(repr(name) for name in names[:5]) + (", ..." if len(names) > 5 else "")
        raise AnomstreamError(f"{path}: {len(names)} streams ({listed}); pass stream=NAME" if names else
                              f"{path}: no stream in the store")
    if stream not in names:
        raise AnomstreamError(f"{path}: no stream {stream!r} (streams: {', '.join(map(repr, names[:5]))})")
    return stream


def _score_attrs(run: dict[str, Any]) -> dict[str, Any]:
    calibration, rule = run.get("calibration"), run.get("events")
    if run.get("score_kind") == "calibrated" and calibration:
        attrs = {"long_name": "calibrated anomaly score", "units": "1",
                 "description": "-log10 p, p the share of the calibration's normal frames whose smoothed statistic "
                                "is at least this high (3: one normal frame in 1,000 scores this high)",
                 "calibration_threshold": calibration["threshold"],
                 "false_alarm_rate": calibration["false_alarm_rate"], "smoothing_frames": calibration["smoothing"]}
    else:
        attrs = {"long_name": "anomaly score (the model's own, uncalibrated)", "units": "1",
                 "description": "higher is more anomalous; not comparable across models or checkpoints"}
    if rule:
        attrs["event_threshold"] = rule["threshold"]
    return attrs


def _variable_attrs(ds: xarray.Dataset, run: dict[str, Any]) -> None:
    codes = FrameStatus.codes()
    described = {
        "score": _score_attrs(run),
        "score_raw": {"long_name": "the model's own anomaly score", "units": "1"},
        "map": {"long_name": "anomaly map (per pixel of the model's input)", "units": "1"},
        "valid": {"long_name": "scored from a full window (status == scored)"},
        "timestamp": {"long_name": "capture time", "units": "s"},
        "status": {"long_name": "what became of the frame", "flag_values": np.array(list(codes.values()), np.uint8),
                   "flag_meanings": " ".join(codes)},
    }
    for name, variable in ds.data_vars.items():
        if name in described:
            variable.attrs.update(described[name])
        elif str(name).startswith("term_"):
            variable.attrs.update({"long_name": f"the model's {str(name)[5:]} term", "units": "1"})


def _jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    """Nested attrs as JSON text (netCDF attrs hold scalars, strings and 1-D arrays only)."""
    return {key: json.dumps(value) if isinstance(value, (dict, list)) else value
            for key, value in attrs.items() if value is not None}


def open_stream(path: str | Path, stream: str | None = None, maps: bool = True) -> xarray.Dataset:
    """One stream of a store as a Dataset (see the module's text); ``stream`` None: the store's only
    one. Values are read when used (lazily), except ``frame_index`` and ``timestamp``. Raises
    AnomstreamError (one line) for a store without that stream, or with several and none named;
    DamagedStoreError for rows missing below ``written``; the store's own errors otherwise."""
    import pandas as pd
    import xarray as xr

    root = open_results(path)
    name = _choose(path, stream, _names(root))
    group = root[name]
    written = int(group.attrs.get("written", 0))
    target = zarr_store(path, read_only=True) if is_url(path) else str(path)
    ds = xr.open_dataset(target, engine="zarr", group=name, consolidated=False, chunks=None,
                         drop_variables=[] if maps else ["map"])
    names = [key for key in ds.data_vars if "frame" in ds[key].dims]
    names.sort(key=lambda key: (ORDER.index(key) if key in ORDER else len(ORDER), key))
    ds = ds[names].isel(frame=slice(0, written))
    run = dict(root.attrs)
    live = bool(group.attrs.get("live"))
    seconds = ds["timestamp"].values
    time = pd.to_datetime(seconds, unit="s", utc=True).tz_localize(None).values if live else seconds
    ds = ds.assign_coords(frame=("frame", ds["frame_index"].values), time=("frame", time)).drop_vars("frame_index")
    ds["frame"].attrs.update({"long_name": "frame index in the source (0 = its first frame)"})
    ds["time"].attrs.update({"long_name": "capture time", **({"timezone": "UTC"} if live else
                                                             {"units": "s", "description": "from the recording's start"})})
    _variable_attrs(ds, {**run, "events": group.attrs.get("event_rule") or run.get("events")})
    ds.attrs = {**_jsonable({shown: run.get(key) for key, shown in RUN_ATTRS.items()}), **_jsonable(dict(group.attrs)),
                "stream": name}  # a stream's own event rule (a camera's threshold) over the run's
    return ds


def events_table(path: str | Path, stream: str | None = None) -> pandas.DataFrame:
    """A stream's events, a row each (columns ``EVENT_COLUMNS``: frames, capture times, peak score,
    threshold, snapshot file); an empty table with the same columns when it has none."""
    import pandas as pd

    columns = read_events(path, _choose(path, stream, stream_names(path)))
    return pd.DataFrame({name: pd.Series(columns[name], dtype="string" if kind == "str" else kind)
                         for name, kind in EVENT_COLUMNS.items()})
