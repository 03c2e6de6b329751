"""One training loop for every model: AdamW + cosine schedule (optional linear warm-up and gradient-norm
clipping), a checkpoint per epoch, resume.

Model selection never looks at test labels: the checkpoint shipped is the last epoch's.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from models.base import AnomalyModel, LabelledAnomalies
from models.registry import build_model
from pipeline.checkpoint import read_checkpoint, save_checkpoint
from pipeline.config import AnomstreamConfig
from pipeline.errors import ConfigError
from pipeline.sources.resolve import open_sources
from pipeline.stream.preprocess import prepare_frame
from pipeline.training.anomalies import labelled_examples


def load_clips(spec: str | list[str], size: int, channels: int, progress: bool = True,
               still_images: bool = False) -> list[np.ndarray]:
    """Every stream of ``spec`` decoded and prepared: one uint8 (N, C, size, size) array each
    (a labelled dataset spec gives its train split)."""
    clips = []
    specs = [spec] if isinstance(spec, str) else spec
    sources = [s for one in specs for s in open_sources(one, still_images=still_images, dataset_split="train")]
    for source in tqdm(sources, desc="decode training data", unit="clip", disable=not progress):
        frames = [prepare_frame(frame.image, size, channels) for frame in source.frames()]
        clips.append(np.stack(frames))
    return clips


class WindowDataset(Dataset):
    """All windows of ``length`` consecutive frames inside each clip (never across clips)."""

    def __init__(self, clips: list[np.ndarray], length: int) -> None:
        self.clips = clips
        self.length = length
        self.index = [(c, s) for c, clip in enumerate(clips) for s in range(len(clip) - length + 1)]
        if not self.index:
            raise ConfigError(f"training data has no clip with {length} frames")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> torch.Tensor:
        clip, start = self.index[item]
        return torch.from_numpy(self.clips[clip][start:start + self.length])


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _median_sample(clips: list[np.ndarray], limit: int = 512) -> torch.Tensor:
    frames = np.concatenate(clips)
    step = max(1, len(frames) // limit)
    return torch.from_numpy(frames[::step])


def train(config: AnomstreamConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train ``config``'s model on ``config.train.data``; returns the final checkpoint path."""
    if config.train is None:
        raise ConfigError("config has no 'train' section")
    settings = config.train
    if settings.threads:
        torch.set_num_threads(settings.threads)
    generator = seed_everything(settings.seed)
    model: AnomalyModel = build_model(config.model.name, config.model.params)
    clips = load_clips(settings.data, model.image_size, model.channels, progress, still_images=model.window_length == 1)
    dataset = WindowDataset(clips, model.window_length)
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, drop_last=True, generator=generator)
    anomalies = _labelled_anomalies(model, settings)
    output = Path(settings.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if model.trains_by_gradient:
        _gradient_epochs(model, loader, settings, config, generator, output, resume, clips, progress, anomalies)
    if model.fits_statistics:
        started = time.time()
        _fit_statistics(model, dataset, settings.batch_size, progress)
        with (output / "train_log.jsonl").open("a") as log:
            log.write(json.dumps({"fit_statistics_seconds": round(time.time() - started, 1)}) + "\n")
    final_path = output / "model.pt"
    save_checkpoint(final_path, model, {"epoch": settings.epochs if model.trains_by_gradient else 0,
                                        "config": config.to_dict()})
    return final_path


def _labelled_anomalies(model: AnomalyModel, settings) -> LabelledAnomalies | None:
    if settings.anomalies is None:
        return None
    if not model.learns_from_anomalies:
        raise ConfigError(f"train.anomalies: model {model.name!r} trains on normal images only")
    specs = [settings.anomalies] if isinstance(settings.anomalies, str) else settings.anomalies
    examples = labelled_examples(specs, model.image_size, model.channels)
    return LabelledAnomalies(torch.from_numpy(examples.images), torch.from_numpy(examples.masks),
                             torch.from_numpy(examples.has_mask))


def _draw(anomalies: LabelledAnomalies | None, count: int, generator: torch.Generator) -> LabelledAnomalies | None:
    if anomalies is None:
        return None
    chosen = torch.randint(len(anomalies.images), (count,), generator=generator)
    return LabelledAnomalies(anomalies.images[chosen], anomalies.masks[chosen], anomalies.has_mask[chosen])


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
        model.initialise_from_frames(_median_sample(clips))


def _fit_statistics(model: AnomalyModel, dataset: Dataset, batch_size: int, progress: bool) -> None:
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.inference_mode():
        model.fit_statistics(tqdm(loader, desc="fit statistics", unit="batch", disable=not progress))


def precision_context(precision: str) -> torch.autocast:
    """The context a training step's forward pass and loss run in for ``train.precision``: CPU autocast to
    bf16, or a disabled one for fp32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def gradient_step(model: AnomalyModel, windows: torch.Tensor, optimizer: torch.optim.Optimizer, precision: str,
                  anomalies: LabelledAnomalies | None = None, gradient_clip: float | None = None) -> dict[str, torch.Tensor]:
    """One optimizer step on ``model.training_loss`` (forward pass and loss in ``precision``, the global
    gradient norm clipped to ``gradient_clip`` when given); its loss terms."""
    with precision_context(precision):
        terms = model.training_loss(windows) if anomalies is None else model.training_loss(windows, anomalies)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if gradient_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], gradient_clip)
    optimizer.step()
    return terms


def learning_rate_factor(step: int, total_steps: int, warmup_steps: int = 0, phase_starts: Sequence[int] = ()) -> float:
    """The multiple of the base learning rate at ``step``: linear warm-up over ``warmup_steps``, then one cosine
    down to 0 at ``total_steps`` (closed form, so a run resumed with another epoch count follows the new end).
    With ``phase_starts`` (steps where a model starts training other parts) each phase gets its own warm-up and
    cosine."""
    start = max((s for s in phase_starts if s <= step), default=0)
    end = min((s for s in phase_starts if s > step), default=total_steps)
    step, total_steps, warmup_steps = step - start, end - start, min(warmup_steps, end - start)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return (1 + math.cos(math.pi * progress)) / 2


def phase_start_steps(shares: Sequence[float], total_steps: int) -> list[int]:
    """The first step of each phase that begins at a share of training (``AnomalyModel.training_phases``), by
    the comparison the model makes: step / total_steps >= share."""
    return [next(step for step in range(total_steps + 1) if step / max(total_steps, 1) >= share) for share in shares]


def _gradient_epochs(model: AnomalyModel, loader: DataLoader, settings, config: AnomstreamConfig,
                     generator: torch.Generator, output: Path, resume: bool, clips: list[np.ndarray],
                     progress: bool, anomalies: LabelledAnomalies | None = None) -> None:
    optimizer = torch.optim.AdamW(model.parameter_groups(settings.learning_rate), weight_decay=settings.weight_decay)
    total_steps = settings.epochs * len(loader)
    warmup_steps = round(settings.warmup_epochs * len(loader))
    phase_starts = phase_start_steps(model.training_phases, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, total_steps, warmup_steps, phase_starts))
    last_path = output / "last.pt"
    start_epoch = 0
    if resume and last_path.exists():
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
        totals: dict[str, float] = {}
        started = time.time()
        learning_rate = optimizer.param_groups[0]["lr"]
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch", disable=not progress)
        for step, windows in enumerate(bar, 1):
            drawn = _draw(anomalies, settings.anomalies_per_batch, generator)
            terms = gradient_step(model, windows, optimizer, settings.precision, drawn, settings.gradient_clip)
            scheduler.step()
            model.after_optimizer_step(scheduler.last_epoch / total_steps)
            for key, value in terms.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach())
            if step % settings.log_every == 0:
                bar.set_postfix(loss=f"{totals['loss'] / step:.4f}")
        record = {"epoch": epoch + 1, "seconds": round(time.time() - started, 1), "learning_rate": learning_rate,
                  "samples_per_s": round(len(loader) * settings.batch_size / (time.time() - started), 2),
                  **{k: v / len(loader) for k, v in totals.items()}}
        with log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")
        save_checkpoint(last_path, model, {
            "epoch": epoch + 1, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "config": config.to_dict(), "train_loss": record["loss"],
        })

