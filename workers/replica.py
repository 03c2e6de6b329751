"""Model replica actor: holds one model on its device and scores window batches (stateless)."""

from __future__ import annotations

import time

import numpy as np
import ray

from pipeline.stream.scorer import Scorer
from pipeline.stream.windows import WindowBatch


@ray.remote
class ReplicaActor:
    def __init__(self, checkpoint: str, threads: int | None = None, reference: dict[str, np.ndarray] | None = None) -> None:
        self.core = Scorer(checkpoint, threads, reference=reference)
        self.busy_seconds = 0.0  # inside score(): what the pipeline around it leaves to the model

    def score(self, batch: WindowBatch) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            return self.core.score(batch)
        finally:
            self.busy_seconds += time.perf_counter() - started

    def busy(self) -> float:
        return self.busy_seconds

    def device(self) -> str:
        return str(self.core.device)
