"""Fitting a calibration on normal footage, in this process (no Ray): the model's reference maps
first (per-position medians and robust scales, from at most ``max_reference_frames`` evenly spread
windows), then every window's score terms, their median / MAD, the trailing statistic and its
distribution.

Used by ``anomstream calibrate`` and at the end of training. Normal data only: never test labels.
The model scores where it is (``--device``; training: ``train.device``): each window batch is moved
there, each result brought back to the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...models.base import AnomalyModel
from ..checkpoint import choose_device, file_sha256, load_model, model_device, prepare_device
from ..errors import AnomstreamError
from ..sources.base import Source, model_frames
from ..sources.resolve import SourceOptions, resolve_inputs
from ..stream.feed import DeviceFeed
from ..stream.windows import EndOfStream, WindowBatch, window_batches
from .progress import advance, job_running, phase
from .scores import Calibration, StreamCalibrator, fit_rarity, term_statistics

MIN_FRAMES = 50  # fewer scored normal frames cannot place a 1-in-20 quantile, let alone a tail


class TooFewFrames(AnomstreamError):
    """The normal data give fewer than ``MIN_FRAMES`` scored frames."""


@dataclass(frozen=True)
class CalibrationOptions:
    """``smoothing``: trailing mean of this many frames (still images: 1); ``false_alarm_rate``: the
    share of normal frames the default threshold passes; ``batch_size``: frames per model call;
    ``max_reference_frames``: reference maps kept at most (per-position medians);
    ``position_scale``: keep the reference maps' per-position robust scales too (see
    :func:`fit_calibration`)."""

    smoothing: int = 9
    false_alarm_rate: float = 1e-3
    batch_size: int = 16
    max_reference_frames: int = 1000
    position_scale: bool = False


def calibrate_checkpoint(checkpoint: str | Path, data: list[str], options: CalibrationOptions = CalibrationOptions(),
                         threads: int | None = None, progress: bool = True,
                         device: str | torch.device | None = None) -> Calibration:
    """Fit a calibration of ``checkpoint`` on the normal sources ``data`` (any source spec), the model
    on ``device`` (``--device``: auto, cpu, cuda, cuda:N; None: auto).

    Raises :class:`AnomstreamError` (one line) when a source cannot be read, the data give fewer
    than ``MIN_FRAMES`` scored frames, an option is out of range or the device is not there."""
    if options.smoothing < 1:
        raise AnomstreamError(f"--smoothing must be >= 1 frame, got {options.smoothing}")
    if not 0 < options.false_alarm_rate < 1:
        raise AnomstreamError(f"--false-alarm-rate must be between 0 and 1, got {options.false_alarm_rate}")
    if threads:
        torch.set_num_threads(threads)
    place = choose_device(device, "--device")
    prepare_device(place)
    model, _ = load_model(checkpoint)
    model.to(place)
    sources = normal_sources(data, model, "--data")
    still = model.window_length == 1  # independent images: no trailing window
    calibration = fit_calibration(model, sources, ", ".join(data), replace(options, smoothing=1) if still else options,
                                  progress)
    calibration.checkpoint_sha256 = file_sha256(checkpoint)
    return calibration


def normal_sources(data: list[str], model: AnomalyModel, option: str) -> list[Source]:
    """The sources of normal footage ``data`` (a labelled dataset spec gives its train split, an
    image folder holds stills for a still model); one-line AnomstreamError naming ``option`` for an
    input that fails or a live source."""
    inputs = resolve_inputs(data, SourceOptions(still_images=model.window_length == 1, dataset_split="train"))
    if inputs.failed:
        raise AnomstreamError(f"{option} {inputs.failed[0].reason}")
    live = [source.describe() for source in inputs.sources if source.is_live]
    if live:
        raise AnomstreamError(f"{option} {live[0]}: a live source; record a few minutes of normal footage and "
                              f"calibrate on the file")
    return inputs.sources


def fit_calibration(model: AnomalyModel, sources: list[Source], description: str, options: CalibrationOptions,
                    progress: bool = True) -> Calibration:
    """The two passes over ``sources`` (each read twice; files, folders, datasets: not cameras), the
    model (in eval mode) scoring on its own device.

    ``position_scale``: besides each reference map's per-position median, keep its per-position
    robust scale (``NAME_scale``): the model's reference terms become z-maps. Measured (docs/results.md):
    it lifts DMAD on Avenue (crowds keep the error high where people walk: video 20, 0.744 -> 0.843)
    and lowers it on Ped2 (anomalies cross the busy walkway: 0.967 -> 0.903), so it is a choice per scene."""
    batch_size, limit = options.batch_size, options.max_reference_frames
    total = sum(source.frame_count or 0 for source in sources)
    step = max(1, math.ceil(total / limit)) if total else 1
    reference = _reference(model, sources, batch_size, step, limit, progress, options.position_scale)
    device = model_device(model)
    model.set_reference({name: torch.from_numpy(m).to(device) for name, m in reference.items()})
    per_stream = [terms for terms in (_terms(model, source, batch_size, progress) for source in sources) if len(terms[0])]
    frames = sum(len(index) for index, _ in per_stream)
    if frames < MIN_FRAMES:
        raise TooFewFrames(f"{description}: {frames} scored normal frames; a calibration needs at least {MIN_FRAMES}")
    weights = model.calibration_terms or model.term_weights
    names = list(weights) if weights else ["score"]
    stats = {name: term_statistics(np.concatenate([terms[name] for _, terms in per_stream]), weights.get(name, 1.0))
             for name in names}
    calibration = Calibration(model.name, stats, options.smoothing, np.zeros(1), 1.0, options.false_alarm_rate,
                              description, frames, reference=reference)
    statistic = [StreamCalibrator(calibration).smoothed(index, terms, np.ones(len(index), bool))
                 for index, terms in per_stream]
    calibration.quantiles, calibration.tail_scale = fit_rarity(np.concatenate(statistic))
    return calibration


def window_batches_of(model: AnomalyModel, source: Source, batch_size: int) -> Iterator[WindowBatch]:
    """The batches of ``source`` that hold a window to score (one-line AnomstreamError on a decode error)."""
    for item in window_batches(model_frames(source, model.channels), source.stream_id, model.window_length, batch_size,
                               model.image_size, model.channels):
        if isinstance(item, EndOfStream):
            if item.error:
                raise AnomstreamError(item.error)
            return
        if item.valid.any():
            yield item


def _each_window(model: AnomalyModel, sources: list[Source], batch_size: int, what: str, progress: bool,
                 use: Callable[[Source, WindowBatch], None]) -> None:
    """``use`` on each batch of scorable windows; the bar counts frames (or, within a job such as
    ``anomstream fit``, the job's bar does: :mod:`pipeline.calibration.progress`)."""
    phase(what)
    with tqdm(desc=what, unit="frame", disable=not progress or job_running(),
              total=sum(s.frame_count or 0 for s in sources) or None) as bar:
        for source in sources:
            for batch in window_batches_of(model, source, batch_size):
                use(source, batch)
                bar.update(batch.size)
                advance("calibration_frame", batch.size)
                advance("decode_frame", batch.size)


def _reference(model: AnomalyModel, sources: list[Source], batch_size: int, step: int, limit: int,
               progress: bool, position_scale: bool) -> dict[str, np.ndarray]:
    """Per-position medians (and scales, ``position_scale``) of the model's reference maps over every
    ``step``-th scored window; when more than ``limit`` are kept (the frame count was unknown), every
    other one is dropped and the step doubles, so at most ``limit`` maps are held."""
    kept: dict[str, list[np.ndarray]] = {}
    if type(model).reference_maps is AnomalyModel.reference_maps:
        return {}
    feed = DeviceFeed(model_device(model))

    def use(_source: Source, batch: WindowBatch) -> None:
        nonlocal step
        chosen = batch.frame_index[batch.valid] % step == 0
        if chosen.any():
            windows = feed.windows(batch)[torch.from_numpy(np.flatnonzero(chosen)).to(feed.device)]
            with torch.inference_mode():
                for name, maps in model.reference_maps(windows).items():
                    kept.setdefault(name, []).extend(maps.float().cpu().numpy().astype(np.float16))
        while kept and len(next(iter(kept.values()))) > limit:
            step *= 2
            for name in kept:
                kept[name] = kept[name][::2]

    _each_window(model, sources, batch_size, "calibration: reference maps", progress, use)
    reference: dict[str, np.ndarray] = {}
    for name, maps in kept.items():
        median, scale = position_statistics(np.stack(maps).astype(np.float32))
        reference[name] = median
        if position_scale:
            reference[f"{name}_scale"] = scale
    return reference


def position_statistics(maps: np.ndarray, floor_share: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per-position median and robust scale (1.4826 x MAD) of normal maps (N, H, W) float32, each
    (H, W) float32. The scale is floored at ``floor_share`` of its mean over positions: a position
    that never changes in the normal footage (MAD 0) would otherwise turn any change into an
    unbounded z-value."""
    median = np.median(maps, axis=0)
    scale = 1.4826 * np.median(np.abs(maps - median), axis=0)
    floor = max(floor_share * float(scale.mean()), 1e-6)
    return median, np.maximum(scale, floor).astype(np.float32)


def _terms(model: AnomalyModel, source: Source, batch_size: int, progress: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A stream's scored frame indices (N,) and its terms (each float64 (N,)), the score as ``score``."""
    index: list[np.ndarray] = []
    terms: dict[str, list[np.ndarray]] = {}
    feed = DeviceFeed(model_device(model))

    def use(_source: Source, batch: WindowBatch) -> None:
        with torch.inference_mode():
            output = model.score(feed.windows(batch))
        index.append(batch.frame_index[batch.valid])
        for name, values in {**output.terms, "score": output.score}.items():
            terms.setdefault(name, []).append(values.double().cpu().numpy())

    _each_window(model, [source], batch_size, f"calibration: scoring {source.stream_id}", progress, use)
    if not index:
        return np.zeros(0, np.int64), {}
    return np.concatenate(index), {name: np.concatenate(values) for name, values in terms.items()}
