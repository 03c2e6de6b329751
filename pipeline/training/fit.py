"""``anomstream fit``: a model for one camera or scene from its normal footage, in one command.

1. The footage is split by time: the last ``holdout`` share of each clip (default 20 %) is held
   back for the calibration, so the threshold is measured on frames the model never trained on
   (``clip.mp4?start_frame=..&end_frame=..``, :mod:`pipeline.sources.clip`).
2. The config follows the footage: grey -> configs/ped2_dmad_cpu.yaml, colour ->
   configs/avenue_dmad_cpu.yaml (both 128 px), fine-tuned from the shipped checkpoint of the same
   config (``init`` ``none``: from scratch); or the config and start given.
3. ``minutes`` is the whole job's budget: a few training steps and one scoring pass are timed on
   this machine first, the decoding and the calibration's two passes over the held-out frames are
   set aside, and the rest buys training steps: whole epochs, or part of one (``windows_per_epoch``).
4. Training and calibration run as ``anomstream train`` does (:func:`pipeline.training.loop.train`),
   under one progress bar with the ETA of the whole job (:mod:`pipeline.calibration.progress`); the calibrated
   checkpoint is written to ``out`` (the run's folder, ``OUT.fit/``, keeps ``last.pt`` and the log).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from ...models.base import AnomalyModel
from ...models.registry import build_model
from ..assets import CONFIGS, SHIPPED_CHECKPOINT
from ..calibration.fit import MIN_FRAMES
from ..calibration.progress import JobProgress, running
from ..checkpoint import choose_device, read_checkpoint
from ..config import AnomstreamConfig, load_config, with_overrides
from ..errors import AnomstreamError
from ..sources.base import Source, model_frames
from ..sources.clip import ClippedSource
from ..sources.resolve import open_sources
from ..stream.preprocess import prepare_frame
from .loop import gradient_step, train

SHIPPED = {1: (CONFIGS / "ped2_dmad_cpu.yaml", SHIPPED_CHECKPOINT),  # by the footage's channels
           3: (CONFIGS / "avenue_dmad_cpu.yaml", SHIPPED_CHECKPOINT.with_name("avenue_dmad_cpu.pt"))}
WARMUP_STEPS = 4  # the first steps are slower (allocations, oneDNN's kernels chosen): 1.08 .. 0.81 s, then ~0.65
PROBE_STEPS = 4
OVERHEAD_S = 20.0  # building the model, checkpoints, the processes' start
MIN_STEPS = 10
MIN_CALIBRATION_FRAMES = MIN_FRAMES + 10  # scored frames the calibration needs, and the first windows' warm-up


@dataclass(frozen=True)
class FitOptions:
    """``minutes``: the whole job's budget; ``holdout``: the share of each clip kept for the
    calibration; ``config`` (None: by the footage); ``init``: ``shipped`` (the shipped checkpoint
    of the chosen config; none for a config of one's own), ``none`` or a checkpoint path;
    ``false_alarm_rate`` of the threshold; ``threads`` and ``device`` (None: the config's)."""

    minutes: float = 10.0
    holdout: float = 0.2
    config: str | None = None
    init: str = "shipped"
    false_alarm_rate: float = 1e-3
    threads: int | None = None
    device: str | None = None
    progress: bool = True


@dataclass(frozen=True)
class Footage:
    """The footage split by time: specs of the training and the calibration parts, their frames."""

    train: list[str]
    calibration: list[str]
    train_frames: list[int]
    calibration_frames: int


def split_footage(specs: list[str], holdout: float) -> Footage:
    """Each clip of ``specs`` cut at ``1 - holdout`` of its frames. Raises AnomstreamError naming the
    spec for footage of unknown length (a camera) or too short to split."""
    train, calibration, train_frames, held = [], [], [], 0
    for spec in specs:
        for source in open_sources(spec):
            path, first, stop = _frame_span(spec, source)
            split = first + round((stop - first) * (1 - holdout))
            if split - first < 16 or stop - split < 16:
                raise AnomstreamError(f"fit: {source.describe()}: {stop - first} frames; at least 16 to train on and "
                                      f"16 to calibrate on after holding back {holdout:.0%}")
            train.append(f"{path}?start_frame={first}&end_frame={split}")
            calibration.append(f"{path}?start_frame={split}&end_frame={stop}")
            train_frames.append(split - first)
            held += stop - split
    if held < MIN_CALIBRATION_FRAMES:
        raise AnomstreamError(f"fit: {held} frames held back for the calibration; it needs at least "
                              f"{MIN_CALIBRATION_FRAMES}: give longer footage or a larger --holdout")
    return Footage(train, calibration, train_frames, held)


def _frame_span(spec: str, source: Source) -> tuple[str, int, int]:
    """(the recording's path, first frame index, the index after the last) of a source."""
    inner = source.inner if isinstance(source, ClippedSource) else source
    path = getattr(inner, "path", None) or getattr(inner, "folder", None)
    if path is None or not inner.frame_count or source.is_live:
        raise AnomstreamError(f"fit: {spec}: recorded footage of known length only (video files, frame folders); "
                              f"record the camera first")
    if isinstance(source, ClippedSource):
        first, stop = source.frame_span()
        return str(path), first, stop
    return str(path), 0, inner.frame_count


def channels_of(spec: str, frames: int = 8) -> int:
    """1 when the footage's first frames are grey (channels within 4 levels), else 3."""
    images = [frame.image for frame in islice(open_sources(spec)[0].frames(), frames)]
    spread = max(int(np.ptp(image.astype(np.int16), axis=2).max()) for image in images)
    return 1 if spread <= 4 else 3


@dataclass(frozen=True)
class Costs:
    """Seconds per unit of work on this machine: a training step, a frame decoded and prepared, a
    window scored."""

    train_step: float
    decode_frame: float
    score_window: float


def measure_costs(model: AnomalyModel, config: AnomstreamConfig, init: str | None, spec: str) -> Costs:
    """Times ``PROBE_STEPS`` training steps (after ``WARMUP_STEPS``) and a scoring pass of a batch on
    ``model`` (a throw-away one: it is trained), with frames of ``spec``."""
    settings = config.train
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = choose_device(settings.device, "train.device")
    if init:
        model.load_state_dict(read_checkpoint(init, expected_model=model.name)["state_dict"])
    model.to(device)
    count = settings.batch_size + model.window_length + 4
    started = time.perf_counter()
    frames = [prepare_frame(frame.image, model.image_size, model.channels)
              for frame in islice(model_frames(open_sources(spec)[0], model.channels), count)]
    decode = (time.perf_counter() - started) / len(frames)
    stacked = torch.from_numpy(np.stack(frames))
    windows = stacked.unfold(0, model.window_length, 1).permute(0, 4, 1, 2, 3)[:settings.batch_size].contiguous()
    windows = windows.to(device)
    done = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    optimizer = torch.optim.AdamW(model.parameter_groups(settings.learning_rate), weight_decay=settings.weight_decay)
    model.train()
    for _ in range(WARMUP_STEPS):
        gradient_step(model, windows, optimizer, settings.precision)
    done()
    started = time.perf_counter()
    for _ in range(PROBE_STEPS):
        gradient_step(model, windows, optimizer, settings.precision)
    done()
    step = (time.perf_counter() - started) / PROBE_STEPS
    model.eval()
    with torch.inference_mode():
        model.score(windows)
        done()
        started = time.perf_counter()
        model.score(windows)
        done()
    return Costs(step, decode, (time.perf_counter() - started) / len(windows))


@dataclass(frozen=True)
class Schedule:
    """What the budget buys: ``epochs`` x ``steps_per_epoch`` (``windows_per_epoch`` None: every
    window once an epoch), and the job's estimated units of work for its progress bar."""

    epochs: int
    steps_per_epoch: int
    windows_per_epoch: int | None
    units: dict[str, int]


def plan_schedule(minutes: float, costs: Costs, footage: Footage, window_length: int, batch_size: int) -> Schedule:
    """Training steps that fit in ``minutes`` beside decoding and the calibration's two passes.
    Raises AnomstreamError (naming --minutes and what it would take) when fewer than MIN_STEPS fit."""
    windows = sum(max(0, frames - window_length + 1) for frames in footage.train_frames)
    decoded = sum(footage.train_frames)
    calibration = 2 * footage.calibration_frames  # the reference maps' pass, then the scoring pass
    fixed = OVERHEAD_S + decoded * costs.decode_frame + calibration * (costs.decode_frame + costs.score_window)
    steps = math.floor((minutes * 60 - fixed) / costs.train_step)
    if steps < MIN_STEPS:
        need = (fixed + MIN_STEPS * costs.train_step) / 60
        raise AnomstreamError(f"--minutes {minutes:g}: decoding and calibrating this footage alone take about "
                              f"{fixed / 60:.1f} min here; give at least {math.ceil(need)} minutes (or less footage)")
    full = windows // batch_size
    if steps >= full:
        epochs, per_epoch, drawn = steps // full, full, None
    else:
        epochs, per_epoch, drawn = 1, steps, steps * batch_size
    return Schedule(epochs, per_epoch, drawn, {"decode_frame": decoded + calibration, "train_step": epochs * per_epoch,
                                               "calibration_frame": calibration})


def fit(specs: list[str], out: str | Path, options: FitOptions = FitOptions()) -> Path:
    """Train and calibrate a model on ``specs`` (normal footage) into the checkpoint ``out`` (see the
    module's text); returns ``out``. Raises AnomstreamError (one line) for footage that cannot be
    split, a budget too small, a config of a still-image model or an ``out`` that exists."""
    out = Path(out)
    if out.exists():
        raise AnomstreamError(f"--out {out}: exists; give another path (a fitted model is never overwritten)")
    footage = split_footage(specs, options.holdout)
    config_path, init = _config_and_init(options, footage.train[0])
    config = load_config(config_path)
    model = build_model(config.model.name, config.model.params)
    if model.window_length < 2 or config.train is None:
        raise AnomstreamError(f"--config {config_path}: fit trains video models (DMAD) with a train: section; "
                              f"still-image models train with anomstream train")
    config.train = with_overrides(config.train, {"threads": options.threads, "device": options.device,
                                                 "calibration_false_alarm_rate": options.false_alarm_rate},
                                  {"threads": "--threads", "device": "--device",
                                   "calibration_false_alarm_rate": "--false-alarm-rate"})
    costs = measure_costs(model, config, init, footage.train[0])
    schedule = plan_schedule(options.minutes, costs, footage, model.window_length, config.train.batch_size)
    config.train = config.train.model_copy(update={
        "data": footage.train, "calibration_data": footage.calibration, "epochs": schedule.epochs,
        "windows_per_epoch": schedule.windows_per_epoch, "output_dir": str(out.with_suffix(".fit")),
        "init_checkpoint": init, "calibrate": True, "warmup_epochs": 0.0})
    _say_plan(config_path, init, footage, schedule, costs, options)
    job = JobProgress({"decode_frame": costs.decode_frame, "train_step": costs.train_step,
                       "calibration_frame": costs.score_window}, schedule.units, shown=options.progress)
    with running(job):
        trained = train(config, progress=options.progress)
    if "calibration" not in read_checkpoint(trained):
        raise AnomstreamError(f"fit: the held-out footage ({footage.calibration_frames} frames) could not calibrate "
                              f"the model; give longer footage or a larger --holdout")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trained, out)
    return out


def _config_and_init(options: FitOptions, first_spec: str) -> tuple[Path, str | None]:
    if options.config is not None:
        init = None if options.init in ("none", "shipped") else options.init
        return Path(options.config), init
    config_path, shipped = SHIPPED[channels_of(first_spec)]
    init = str(shipped) if options.init == "shipped" else None if options.init == "none" else options.init
    return config_path, init


def _say_plan(config_path: Path, init: str | None, footage: Footage, schedule: Schedule, costs: Costs,
              options: FitOptions) -> None:
    start = f"fine-tuned from {Path(init).name}" if init else "from scratch"
    windows = f"{schedule.windows_per_epoch} windows drawn" if schedule.windows_per_epoch else "every window"
    print(f"fit: {config_path.name}, {start}; training on {sum(footage.train_frames)} frames of {len(footage.train)} "
          f"clip(s), calibration on the last {options.holdout:.0%} ({footage.calibration_frames} frames, never trained "
          f"on); budget {options.minutes:g} min: {schedule.epochs} epoch(s) of {schedule.steps_per_epoch} steps "
          f"({windows}; {costs.train_step:.2f} s a step here)", flush=True)
