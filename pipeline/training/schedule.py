"""The learning-rate schedule of the training loop: linear warm-up, then a cosine to 0, started
again at each training phase of a model (DSR's stage 3)."""

from __future__ import annotations

import math
from collections.abc import Sequence


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
