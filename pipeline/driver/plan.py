"""What a scoring run is asked to do, built from the command line or a config without Ray.

A :class:`RunPlan` is frozen: the driver reads it and never changes it, so every part of a run
(the actors' set-up, the loop, the report) sees the same options.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ScoreSection
from ..events.recorder import EventOptions
from ..sources.resolve import SourceOptions
from ..stream.live import LiveOptions

if TYPE_CHECKING:
    from ..sources.cameras_file import Camera

MODES = ("create", "overwrite", "resume")


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """One scoring run.

    Inputs: ``specs`` (source specs, :mod:`pipeline.sources.resolve`), ``stream_ids`` (one per spec,
    None: the input's own name, e.g. from a manifest), ``source_options``. Model: ``checkpoint``,
    ``expected_model`` (the model a config names: a checkpoint of another is refused),
    ``calibration`` (a calibration file; None: the checkpoint's own, if any). Replicas, device,
    backend, precision, batch size, writers, flush interval: ``settings`` (the config's ``score``
    section).
    Output: ``out`` (a path or an object-store URL), ``mode`` (create, overwrite or resume),
    ``rotate_s`` (one store per period of that many seconds). Live runs: ``live`` (policy, latency
    bound, retention), ``duration_s`` (stop after that long), ``view`` ((host, port) of the live
    view), ``metrics`` ((host, port) of /metrics and /healthz alone, without the page),
    ``view_token`` (what requests to either must carry; None: none). ``events``: the event rule and
    webhook as given. ``cameras``: a cameras file's cameras (their specs and names are in ``specs``
    and ``stream_ids``; their own settings and credentials go onto their sources). ``address``: a Ray cluster to join
    (None: a local Ray of the run's own); ``max_active_streams``: decoders at most (None: replicas
    + 1, or every live source); ``progress``: the console reporter (progress bar, live table, event
    lines) instead of a silent one. ``stop``: the event SIGINT/SIGTERM set from the command's start
    (``anomstream live``: :func:`pipeline.driver.signals.stop_on_signals`); the run then stops on
    it cleanly from its first moment, and starts nothing when it is set already (None: the run's
    own, from when it knows a source is live)."""

    specs: tuple[str, ...]
    checkpoint: str
    out: str | Path
    settings: ScoreSection = field(default_factory=ScoreSection)
    mode: str = "create"
    stream_ids: tuple[str | None, ...] | None = None
    source_options: SourceOptions = SourceOptions()
    expected_model: str | None = None
    calibration: str | None = None
    rotate_s: float | None = None
    live: LiveOptions = LiveOptions()
    duration_s: float | None = None
    view: tuple[str, int] | None = None
    metrics: tuple[str, int] | None = None
    view_token: str | None = field(default=None, repr=False)
    events: EventOptions = EventOptions()
    cameras: tuple[Camera, ...] = ()
    address: str | None = None
    max_active_streams: int | None = None
    progress: bool = True
    stop: threading.Event | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"RunPlan.mode: one of {', '.join(MODES)}, got {self.mode!r}")
        object.__setattr__(self, "specs", tuple(self.specs))
        if self.stream_ids is not None:
            object.__setattr__(self, "stream_ids", tuple(self.stream_ids))

