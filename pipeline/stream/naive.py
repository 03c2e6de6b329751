"""The single-process reference loop (decode -> model -> zarr), the baseline the pipeline must beat."""

from __future__ import annotations

from pathlib import Path

from ...models.base import AnomalyModel
from ..sources.base import model_frames
from ..sources.resolve import open_sources
from ..store import ResultStore
from .scorer import Scorer
from .windows import EndOfStream, window_batches


def naive_score(spec: str, checkpoint: str, out: str | Path, batch_size: int = 16, threads: int | None = None) -> int:
    """Score every stream of ``spec`` in this process; returns frames written."""
    core = Scorer(checkpoint, threads)
    model: AnomalyModel = core.model
    store = ResultStore(out, {"model": model.name, "term_weights": model.term_weights}, mode="overwrite")
    frames = 0
    for source in open_sources(spec):
        store.open_stream(source.stream_id, core.arrays, batch_size, source.frame_count, {"source": source.describe()})
        error, row = None, 0  # rows follow one another; a frame index may skip (an image that cannot be read)
        for item in window_batches(model_frames(source, model.channels), source.stream_id, model.window_length, batch_size,
                                   model.image_size, model.channels):
            if isinstance(item, EndOfStream):
                error = item.error
                break
            store.write(source.stream_id, row, core.score(item))
            row += item.size
            frames += item.size
        store.close_stream(source.stream_id, error)
    return frames
