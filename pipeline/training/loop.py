"""One training loop for every model: AdamW + the schedule of :mod:`.schedule` (optional linear
warm-up, gradient-norm clipping), a checkpoint per epoch, resume; data from :mod:`.data`.

On ``train.device`` (auto: CUDA when torch sees one): the model and each batch there (pinned batches
copied without blocking on CUDA), ``train.precision: bf16`` autocast with the device's type,
checkpoints written with CPU tensors (:mod:`pipeline.checkpoint`).

Model selection never looks at test labels: the checkpoint shipped is the last epoch's.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm import tqdm

from ...models.base import AnomalyModel, LabelledAnomalies
from ...models.registry import build_model
from ..calibration.fit import CalibrationOptions, TooFewFrames, fit_calibration, normal_sources
from ..calibration.progress import advance, job_running, phase
from ..calibration.scores import Calibration
from ..checkpoint import choose_device, precision_context, prepare_device, read_checkpoint, save_checkpoint
from ..config import AnomstreamConfig
from ..errors import ConfigError
from .augment import augment_windows
from .data import WindowDataset, draw_anomalies, labelled_anomalies, load_clips, median_sample
from .schedule import learning_rate_factor, phase_start_steps


def seed_everything(seed: int) -> torch.Generator:
    """Python's, NumPy's and torch's (CPU and CUDA) generators seeded with ``seed``; returns a CPU
    generator of its own, seeded too, for the data order and the augmentations."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def train(config: AnomstreamConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train ``config``'s model on ``config.train.data`` on ``config.train.device``; returns the final
    checkpoint path. Raises ConfigError / AnomstreamError (one line) for a config or device that does
    not do (``train.device cuda: torch sees no CUDA device``)."""
    if config.train is None:
        raise ConfigError("config has no 'train' section")
    settings = config.train
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = choose_device(settings.device, "train.device")
    prepare_device(device)
    generator = seed_everything(settings.seed)
    model: AnomalyModel = build_model(config.model.name, config.model.params)
    clips = load_clips(settings.data, model.image_size, model.channels, progress, still_images=model.window_length == 1)
    dataset = WindowDataset(clips, model.window_length)
    sampler = RandomSampler(dataset, num_samples=min(settings.windows_per_epoch or len(dataset), len(dataset)),
                            generator=generator)
    loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler, drop_last=True,
                        pin_memory=device.type == "cuda")
    anomalies = labelled_anomalies(model, settings)
    output = Path(settings.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    model.to(device)
    if model.trains_by_gradient:
        run = _TrainingRun(config, output, generator, resume, progress, device)
        _gradient_epochs(model, loader, run, clips, anomalies)
    if model.fits_statistics:
        started = time.time()
        _fit_statistics(model, dataset, settings.batch_size, progress, device)
        with (output / "train_log.jsonl").open("a") as log:
            log.write(json.dumps({"fit_statistics_seconds": round(time.time() - started, 1)}) + "\n")
    final_path = output / "model.pt"
    extra = {"epoch": settings.epochs if model.trains_by_gradient else 0, "config": config.to_dict()}
    calibration = _calibrate(model, settings, progress) if settings.calibrate and model.scores_anomalies else None
    if calibration is not None:
        extra["calibration"] = calibration.to_payload()
    save_checkpoint(final_path, model, extra)
    return final_path


def _calibrate(model: AnomalyModel, settings, progress: bool) -> Calibration | None:
    """The calibration of the trained model on ``calibration_data`` (else the training data); None,
    with a warning, when those data are too few to calibrate on."""
    data = settings.calibration_data or settings.data
    specs = [data] if isinstance(data, str) else list(data)
    still = model.window_length == 1
    sources = normal_sources(specs, model, "train.calibration_data:" if settings.calibration_data else "train.data:")
    model.eval()
    try:
        options = CalibrationOptions(1 if still else settings.calibration_smoothing, settings.calibration_false_alarm_rate,
                                     settings.batch_size, position_scale=settings.calibration_position_scale)
        return fit_calibration(model, sources, ", ".join(specs), options, progress=progress)
    except TooFewFrames as error:
        print(f"warning: no calibration: {error} (anomstream calibrate can add one later)", file=sys.stderr)
        return None


def _initialise(model: AnomalyModel, settings, clips: list[np.ndarray]) -> None:
    """A new run: weights from ``init_checkpoint`` (fine-tuning), else the model's own start (the earlier
    checkpoint it builds on, data-dependent initialisation)."""
    if settings.init_checkpoint:
        state = read_checkpoint(settings.init_checkpoint, expected_model=model.name)["state_dict"]
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            detail = str(error).strip().splitlines()[-1].strip()
            raise ConfigError(f"train.init_checkpoint: {settings.init_checkpoint} does not fit this {model.name} "
                              f"config ({detail})") from None
    else:
        if (earlier := model.builds_on()) is not None:
            model.start_from(read_checkpoint(earlier, expected_model=model.name))
        model.initialise_from_frames(median_sample(clips))


def _fit_statistics(model: AnomalyModel, dataset: Dataset, batch_size: int, progress: bool, device: torch.device) -> None:
    """``model.fit_statistics`` over the training windows in order, each batch on ``device``."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda")
    batches = tqdm(loader, desc="fit statistics", unit="batch", disable=not progress)
    with torch.inference_mode():
        model.fit_statistics(batch.to(device, non_blocking=True) for batch in batches)


def gradient_step(model: AnomalyModel, windows: torch.Tensor, optimizer: torch.optim.Optimizer, precision: str,
                  anomalies: LabelledAnomalies | None = None, gradient_clip: float | None = None) -> dict[str, torch.Tensor]:
    """One optimizer step on ``model.training_loss`` of uint8 ``windows`` (N, T, C, H, W) on the model's
    device (forward pass and loss in ``precision``: bf16 autocast with that device's type; the global
    gradient norm clipped to ``gradient_clip`` when given); its loss terms (0-dim tensors)."""
    with precision_context(precision, windows.device):
        terms = model.training_loss(windows) if anomalies is None else model.training_loss(windows, anomalies)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if gradient_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], gradient_clip)
    optimizer.step()
    return terms


@dataclass(frozen=True)
class _TrainingRun:
    """One training run's fixed parts: its ``config``, the ``output`` folder (``last.pt``,
    ``train_log.jsonl``), the seeded ``generator``, whether it ``resume``s from ``last.pt`` and shows
    ``progress`` bars, the ``device`` the model and its batches are on."""

    config: AnomstreamConfig
    output: Path
    generator: torch.Generator
    resume: bool
    progress: bool
    device: torch.device = torch.device("cpu")


def _gradient_epochs(model: AnomalyModel, loader: DataLoader, run: _TrainingRun, clips: list[np.ndarray],
                     anomalies: LabelledAnomalies | None = None) -> None:
    settings, config, generator, output, progress = run.config.train, run.config, run.generator, run.output, run.progress
    optimizer = torch.optim.AdamW(model.parameter_groups(settings.learning_rate), weight_decay=settings.weight_decay)
    total_steps = settings.epochs * len(loader)
    warmup_steps = round(settings.warmup_epochs * len(loader))
    phase_starts = phase_start_steps(model.training_phases, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, total_steps, warmup_steps, phase_starts))
    last_path = output / "last.pt"
    start_epoch = 0
    if run.resume and last_path.exists():
        state = read_checkpoint(last_path)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.last_epoch = state["scheduler"]["last_epoch"]  # the step count (a cosine's state from older runs too)
        scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * learning_rate_factor(scheduler.last_epoch, total_steps, warmup_steps, phase_starts)
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = state["epoch"]
    else:
        _initialise(model, settings, clips)
    log_path = output / "train_log.jsonl"
    for epoch in range(start_epoch, settings.epochs):
        model.train()
        totals: dict[str, torch.Tensor | float] = {}
        started = time.time()
        learning_rate = optimizer.param_groups[0]["lr"]
        phase(f"training, epoch {epoch + 1}/{settings.epochs}")
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch", disable=not progress or job_running())
        for step, windows in enumerate(bar, 1):
            windows = augment_windows(windows, settings.augment, generator).to(run.device, non_blocking=True)
            drawn = draw_anomalies(anomalies, settings.anomalies_per_batch, generator, run.device)
            terms = gradient_step(model, windows, optimizer, settings.precision, drawn, settings.gradient_clip)
            scheduler.step()
            advance("train_step")
            model.after_optimizer_step(scheduler.last_epoch / total_steps)
            for key, value in terms.items():  # summed where they are: no wait for the device each step
                totals[key] = totals.get(key, 0.0) + value.detach()
            if step % settings.log_every == 0:
                bar.set_postfix(loss=f"{float(totals['loss']) / step:.4f}")
        means = {key: float(value) / len(loader) for key, value in totals.items()}
        record = {"epoch": epoch + 1, "seconds": round(time.time() - started, 1), "learning_rate": learning_rate,
                  "samples_per_s": round(len(loader) * settings.batch_size / (time.time() - started), 2),
                  **means}
        with log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")
        save_checkpoint(last_path, model, {
            "epoch": epoch + 1, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "config": config.to_dict(), "train_loss": record["loss"],
        })

