"""The scoring work of a replica, without Ray: a model on its device turns window batches into
per-frame arrays (used by the replica actor, the naive loop and the bench)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..backends.choice import BackendChoice
from ..backends.runners import BackendError, ChunkedRunner, make_runner
from ..backends.verdict import QUANTIZED
from ..checkpoint import (
    choose_device,
    load_model,
    model_from_payload,
    precision_context,
    prepare_device,
    set_reference_maps,
)
from ..store import result_arrays
from .feed import DeviceFeed
from .rows import unscored_rows
from .windows import WindowBatch


class Scorer:
    """A model on its device that scores window batches (the work of a replica, without Ray)."""

    def __init__(self, checkpoint: str | dict[str, Any], threads: int | None = None,
                 device: str | torch.device | None = None, reference: dict[str, np.ndarray] | None = None,
                 backend: BackendChoice | None = None) -> None:
        """``checkpoint``: a checkpoint file, or its contents as read once by the driver
        (:func:`pipeline.checkpoint.read_checkpoint_and_hash`; a replica on another node needs no copy of
        the file); ``device``: where torch scores (``--device``: auto (None) is CUDA when torch sees
        one, cpu, cuda, cuda:N; AnomstreamError naming ``--device`` when it is not there);
        ``reference``: a calibration's per-position normal maps (``AnomalyModel.set_reference``);
        ``backend``: what scores (:func:`pipeline.backends.choice.choose_backend`; default torch, fp32).
        The runtimes run on the CPU with ``threads`` threads; torch in bf16 uses autocast of the
        device's type."""
        if threads:
            torch.set_num_threads(threads)
        self.device = choose_device(device, "--device")
        prepare_device(self.device)
        if isinstance(checkpoint, dict):
            self.model = model_from_payload(checkpoint, f"checkpoint of model {checkpoint.get('model')!r}")
        else:
            self.model, _ = load_model(checkpoint)
        set_reference_maps(self.model.to(self.device).eval(), reference)
        self.backend = backend or BackendChoice()
        self.runner = None
        if self.backend.backend != "torch":
            try:
                self.runner = make_runner(self.backend.backend, self.backend.graph, self.model.term_names, threads,
                                          self.backend.precision, images_per_call=self.model.images_per_graph_call())
                self.device = torch.device("cpu")  # the runtimes score on the CPU
            except BackendError as error:
                if self.backend.required:
                    raise
                precision = "fp32" if self.backend.precision in QUANTIZED else self.backend.precision
                self.backend = BackendChoice("torch", precision, note=f"{error}: torch scores here instead")
        self.feed = DeviceFeed(self.device)  # one copy to the device and one back per batch
        size = self.model.image_size
        self.arrays = result_arrays((size, size), self.model.term_names)  # what the store holds

    def score(self, batch: WindowBatch) -> dict[str, np.ndarray]:
        """The store's per-frame arrays (:func:`pipeline.store.result_arrays`) for the batch's B
        targets: ``score`` float32 (B,), ``map`` float16 (B, size, size), ``term_*`` float32 (B,),
        ``frame_index``, ``timestamp``, ``status``, ``valid``; targets not scored (status other than
        SCORED) keep the fill value (NaN)."""
        result = unscored_rows(batch, self.arrays)
        valid = batch.valid
        if valid.any():
            output = self.score_windows(self.feed.windows(batch))
            names = list(output.terms)
            score, anomaly_map, terms = self.feed.to_host(output.score, output.anomaly_map,
                                                          [output.terms[name] for name in names])
            result["score"][valid] = result["score_raw"][valid] = score
            result["map"][valid] = anomaly_map
            for name, values in zip(names, terms):
                result[f"term_{name}"][valid] = values
        return result

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Score one batch of black windows of each size in ``batch_sizes`` and drop the result, so
        that a run's first batches do not pay for the runtime's first inference of their shape
        (OpenVINO's CPU plugin makes its kernels for a shape then: measured on the shipped Ped2 DMAD,
        one thread, batch 16: +100 ms in int8, +200 ms in fp32 on a 200-480 ms call; a new size
        later +14 ms). Only an exported graph is warmed: it holds no state a call could change;
        torch eager has no such first-call cost on the CPU."""
        if self.runner is None:
            return
        model, runner = self.model, self.runner
        chunked = isinstance(runner, ChunkedRunner)  # its graph sees chunks of a batch: each chunk's size once
        for size in sorted(set().union(*(runner.call_sizes(s) if chunked else {s} for s in batch_sizes))):
            runner.score(torch.zeros((size, model.window_length, model.channels, model.image_size, model.image_size),
                                     dtype=torch.uint8))

    def score_windows(self, windows: torch.Tensor) -> Any:
        """``model.score`` of uint8 windows (N, T, C, H, W) by this scorer's backend (torch: windows on
        ``self.device``, in ``self.backend.precision``): ScoreOutput, its tensors on that device."""
        if self.runner is not None:
            return self.runner.score(windows)
        with torch.inference_mode(), precision_context(self.backend.precision, self.device):
            return self.model.score(windows)
