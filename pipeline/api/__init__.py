"""anomstream: streaming anomaly detection in video and still images, from Python.

.. code-block:: python

    import anomstream

    report = anomstream.score(["clip.mp4"], out="clip.zarr")   # the shipped Ped2 DMAD model
    ds = anomstream.open_store("clip.zarr")                     # xarray.Dataset along ``frame``
    ds["score"].attrs["calibration_threshold"]                  # 3.0: what the score means
    anomstream.events("clip.zarr")                              # pandas.DataFrame, a row per event

This module is the package ``anomstream`` itself (pyproject's package-dir: the repo's folders are
installed beneath it as ``anomstream.pipeline``, ``anomstream.models``, ``anomstream.workers`` and
``anomstream.configs``). Importing it imports neither torch nor Ray: each function imports what it
needs. docs/python.md has the whole story.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .pipeline import __version__

if TYPE_CHECKING:
    import pandas
    import xarray

    from .pipeline.driver.report import RunReport

__all__ = ["__version__", "events", "open_store", "score", "shipped_checkpoint", "streams"]


def shipped_checkpoint() -> Path:
    """The checkpoint that comes with the package: DMAD trained and calibrated on UCSD Ped2 (grey,
    128 px; docs/results.md)."""
    from .pipeline.assets import SHIPPED_CHECKPOINT

    return SHIPPED_CHECKPOINT


def score(sources: str | list[str], out: str | Path, checkpoint: str | Path | None = None, *,
          overwrite: bool = False, resume: bool = False, replicas: int | None = None,
          progress: bool = False) -> RunReport:
    """Score ``sources`` (videos, frame or image folders, dataset specs, camera URLs: what
    ``anomstream score`` takes) into the zarr store ``out`` with ``checkpoint`` (None: the shipped
    one), as ``anomstream score`` does: on a local Ray of this process's own (started once,
    ~2 s), ``replicas`` model replicas (None: the config's default). Returns the run's report
    (``report.streams``: frames per stream; ``report.failed``: inputs that gave no stream, each with
    its one-line reason). Raises AnomstreamError (one line) for a bad option, an existing ``out``
    without ``overwrite`` / ``resume``, or a checkpoint that cannot be read."""
    from .pipeline.config import ScoreSection
    from .pipeline.driver.plan import RunPlan
    from .pipeline.driver.run import score_sources

    specs = [sources] if isinstance(sources, (str, Path)) else list(sources)
    settings = ScoreSection() if replicas is None else ScoreSection(replicas=replicas)
    plan = RunPlan(specs=tuple(str(spec) for spec in specs), checkpoint=str(checkpoint or shipped_checkpoint()),
                   out=out, settings=settings, mode="resume" if resume else "overwrite" if overwrite else "create",
                   progress=progress)
    return score_sources(plan)


def streams(path: str | Path) -> list[str]:
    """The streams of the store at ``path`` (a folder or an object-store URL), sorted."""
    from .pipeline.store.dataset import stream_names

    return stream_names(path)


def open_store(path: str | Path, stream: str | None = None, maps: bool = True) -> xarray.Dataset:
    """One stream of a store as an ``xarray.Dataset`` along ``frame`` (coordinate: the frame index
    in the source; ``time``: capture time), with CF-style attrs; ``stream`` None: the store's only
    stream; ``maps`` False leaves the anomaly maps out. Variables: ``score`` (float32; calibrated
    ``-log10 p`` when the checkpoint is calibrated: its attrs say which, with the threshold),
    ``score_raw``, ``map`` (float16, frame x y x x), ``status`` (uint8, CF flags), ``valid``,
    ``timestamp`` (float64 s), ``term_*``. Raises AnomstreamError (one line) naming the store for a
    missing stream, or several streams and none named (see :func:`streams`)."""
    from .pipeline.store.dataset import open_stream

    return open_stream(path, stream, maps)


def events(path: str | Path, stream: str | None = None) -> pandas.DataFrame:
    """A stream's events as a ``pandas.DataFrame``, a row per event (``event_id``, ``start_frame``,
    ``end_frame``, ``start_time``, ``end_time``, ``peak_frame``, ``peak_time``, ``peak_score``,
    ``threshold``, ``snapshot``); empty, with those columns, when it has none."""
    from .pipeline.store.dataset import events_table

    return events_table(path, stream)
