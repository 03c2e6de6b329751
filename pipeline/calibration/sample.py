"""Windows of normal footage spread over its whole length: what int8 quantization collects its
activation ranges on, and what the start-of-run check of a reduced-precision replica ranks
(:mod:`pipeline.backends.choice`)."""

from __future__ import annotations

import numpy as np

from ...models.base import AnomalyModel
from ..errors import AnomstreamError
from .fit import normal_sources, window_batches_of


def sample_windows(model: AnomalyModel, data: list[str], count: int, option: str = "--calibration-data") -> np.ndarray:
    """``count`` uint8 windows (count, T, C, H, W) at even steps over the frames of ``data`` (normal
    footage specs, as ``anomstream calibrate`` reads them; fewer when the footage is shorter; at most
    2 x ``count`` held at a time, whatever its length).
    Raises AnomstreamError (one line naming ``option``) when a spec cannot be read or holds no window."""
    sources = normal_sources(data, model, option)
    total = sum(source.frame_count or 0 for source in sources)
    step = max(1, total // count) if total else 1
    kept: list[np.ndarray] = []
    for source in sources:
        for batch in window_batches_of(model, source, 16):
            chosen = batch.frame_index[batch.valid] % step == 0
            if chosen.any():
                kept.extend(batch.windows()[chosen])
            while len(kept) > 2 * count:  # frame count unknown: keep every other one, take half as many after
                kept, step = kept[::2], step * 2
    if not kept:
        raise AnomstreamError(f"{option} {', '.join(data)}: no window of {model.window_length} frames in the footage")
    picked = np.linspace(0, len(kept) - 1, min(count, len(kept))).round().astype(int)
    return np.stack([kept[i] for i in picked])
