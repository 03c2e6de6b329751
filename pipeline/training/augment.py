"""Augmentation of training windows, drawn from the run's seeded generator so a run repeats."""

from __future__ import annotations

import torch


def augment_windows(windows: torch.Tensor, kinds: list[str], generator: torch.Generator) -> torch.Tensor:
    """``windows`` uint8 (N, T, C, H, W) (or (N, C, H, W) stills) with each of ``kinds`` applied.

    ``hflip``: each window mirrored along its width with probability 1/2, every frame of it alike.
    Returns a new tensor when something was applied, ``windows`` itself otherwise.
    """
    for kind in kinds:
        if kind == "hflip":
            chosen = torch.rand(len(windows), generator=generator) < 0.5
            if chosen.any():
                windows = windows.clone()
                windows[chosen] = windows[chosen].flip(-1)
        else:
            raise ValueError(f"train.augment: unknown augmentation {kind!r}")
    return windows
