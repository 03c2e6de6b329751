"""The scoring work of a replica, without Ray: a model on its device turns window batches into
per-frame arrays (used by the replica actor, the naive loop and the bench)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.checkpoint import load_model
from pipeline.stream.windows import WindowBatch


class ReplicaCore:
    """The scoring work of a replica, without Ray (used by the actor, the naive loop and benches)."""

    def __init__(self, checkpoint: str, threads: int | None = None, device: str | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, _ = load_model(checkpoint)
        self.model.to(self.device).eval()

    def score(self, batch: WindowBatch) -> dict[str, np.ndarray]:
        """Per-target arrays of the batch; invalid targets (no full window) get NaN."""
        valid = batch.valid
        size = self.model.image_size
        result = {
            "score": np.full(batch.size, np.nan, np.float32),
            "map": np.full((batch.size, size, size), np.nan, np.float16),
            "frame_index": batch.frame_index,
            "timestamp": batch.timestamp,
            "valid": valid,
        }
        for name in self.model.term_weights:
            result[f"term_{name}"] = np.full(batch.size, np.nan, np.float32)
        if valid.any():
            windows = torch.from_numpy(batch.windows()).to(self.device, non_blocking=True)
            with torch.inference_mode():
                output = self.model.score(windows)
            result["score"][valid] = output.score.float().cpu().numpy()
            result["map"][valid] = output.anomaly_map.float().cpu().numpy().astype(np.float16)
            for name, values in output.terms.items():
                result[f"term_{name}"][valid] = values.float().cpu().numpy()
        return result
