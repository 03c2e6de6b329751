"""Training data: every stream of the training spec decoded and prepared once, the windows of
consecutive frames inside each clip, a sample of frames for data-dependent initialisation, and the
labelled anomalies drawn into each step for models that learn from them."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ...models.base import AnomalyModel, LabelledAnomalies
from ..calibration.progress import advance, job_running
from ..errors import ConfigError
from ..sources.base import model_frames
from ..sources.resolve import open_sources
from ..stream.preprocess import prepare_frame
from .anomalies import labelled_examples


def load_clips(spec: str | list[str], size: int, channels: int, progress: bool = True,
               still_images: bool = False) -> list[np.ndarray]:
    """Every stream of ``spec`` decoded and prepared: one uint8 (N, C, size, size) array each
    (a labelled dataset spec gives its train split)."""
    clips = []
    specs = [spec] if isinstance(spec, str) else spec
    sources = [s for one in specs for s in open_sources(one, still_images=still_images, dataset_split="train")]
    for source in tqdm(sources, desc="decode training data", unit="clip", disable=not progress or job_running()):
        frames = [prepare_frame(frame.image, size, channels) for frame in model_frames(source, channels)]
        advance("decode_frame", len(frames))
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


def median_sample(clips: list[np.ndarray], limit: int = 512) -> torch.Tensor:
    """At most about ``limit`` frames evenly spread over the clips, uint8 (n, C, H, W)."""
    frames = np.concatenate(clips)
    step = max(1, len(frames) // limit)
    return torch.from_numpy(frames[::step])


def labelled_anomalies(model: AnomalyModel, settings) -> LabelledAnomalies | None:
    """``settings.anomalies`` (dataset specs of the labelled split) as tensors; None when not set."""
    if settings.anomalies is None:
        return None
    if not model.learns_from_anomalies:
        raise ConfigError(f"train.anomalies: model {model.name!r} trains on normal images only")
    specs = [settings.anomalies] if isinstance(settings.anomalies, str) else settings.anomalies
    examples = labelled_examples(specs, model.image_size, model.channels)
    return LabelledAnomalies(torch.from_numpy(examples.images), torch.from_numpy(examples.masks),
                             torch.from_numpy(examples.has_mask))


def draw_anomalies(anomalies: LabelledAnomalies | None, count: int, generator: torch.Generator,
                   device: torch.device | str = "cpu") -> LabelledAnomalies | None:
    """``count`` labelled anomalies drawn with replacement by the CPU ``generator`` from ``anomalies``
    (held on the CPU), moved to ``device`` (the model's); None when there are none."""
    if anomalies is None:
        return None
    chosen = torch.randint(len(anomalies.images), (count,), generator=generator)
    return LabelledAnomalies(*(part[chosen].to(device, non_blocking=True)
                               for part in (anomalies.images, anomalies.masks, anomalies.has_mask)))
