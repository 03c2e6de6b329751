"""Model replica actor: holds one model on its device and scores window batches (stateless).

The driver creates replicas restartable by Ray (``max_restarts``, ``max_task_retries``): when a
replica process dies, Ray starts it again and sends its batches again. Every call carries
``[ref]`` to the model (the checkpoint's contents, a calibration's reference maps, the backend and the
device, put in the object store once by the driver): a replica, first started or restarted, loads the
model from the first call it gets. (A reference among the constructor's arguments would make Ray
warn that a restart needs it alive: ray-project/ray#53727.) Each answer says which process scored
it, so the driver sees a restart and reports it.

The device is the driver's choice for this replica's placement: ``cpu`` when Ray gave it no GPU
(``--device cpu``, or a cluster without GPUs), else ``cuda`` (asked for by name: torch must see it)
or ``auto`` (CUDA when torch sees one).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import ray

from ..pipeline.errors import first_line
from ..pipeline.stream.scorer import Scorer
from ..pipeline.stream.windows import WindowBatch
from .priority import niceness, raise_priority


@ray.remote
class ReplicaActor:
    def __init__(self, threads: int | None = None) -> None:
        self.priority_warning = raise_priority()
        self.threads, self.core = threads, None
        self.busy_seconds = 0.0  # inside score(): what the pipeline around it leaves to the model

    def _scorer(self, model: list[ray.ObjectRef]) -> Scorer:
        if self.core is None:
            contents, reference, backend, device = ray.get(model[0])
            self.core = Scorer(contents, self.threads, device, reference=reference, backend=backend)
        return self.core

    @ray.method(num_returns=2)
    def score(self, model: list[ray.ObjectRef], batch: WindowBatch) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(who scored it: ``pid`` and ``node`` of this process, small; the store's rows of the batch)."""
        scorer = self._scorer(model)
        started = time.perf_counter()
        try:
            return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}, scorer.score(batch)
        finally:
            self.busy_seconds += time.perf_counter() - started

    def busy(self) -> float:
        return self.busy_seconds

    def describe(self, model: list[ray.ObjectRef], warm_up: tuple[int, ...] = ()) -> dict[str, Any]:
        """Where this replica runs (loading the model first, then scoring a black batch of each size
        in ``warm_up``: :meth:`Scorer.warm_up`): ``device``, ``pid``, ``node`` (Ray node id), ``nice``
        (its priority), ``warning`` (None, or why its priority could not be raised or its warm-up failed),
        ``warmed`` (the sizes asked for)."""
        scorer = self._scorer(model)
        warnings = [self.priority_warning] if self.priority_warning else []
        try:
            scorer.warm_up(warm_up)
        except Exception as error:  # noqa: BLE001 - the runtime's own; a real batch meets it again, where it is handled
            warnings.append(f"a replica's warm-up failed ({first_line(error)}); its first batches pay for it")
        return {"device": str(scorer.device), "backend": scorer.backend.backend, "backend_note": scorer.backend.note,
                "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id(), "nice": niceness(),
                "warning": "; ".join(warnings) or None,
                "warmed": list(warm_up)}
