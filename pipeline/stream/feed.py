"""A replica's copies between the host and its device, once per batch each way.

A :class:`~pipeline.stream.windows.WindowBatch` carries each image once (K frames: context and
targets). The frames go to the device in one host-to-device copy (from a pinned staging buffer on
CUDA, so the copy is asynchronous and at full bus speed) and the (N, T, C, H, W) windows are built
there as a strided view (``unfold``), not T copies on the host. The answer comes back in one
device-to-host copy: score and terms as float32 and the anomaly map converted to float16 on the
device, packed into one byte buffer. On the CPU the same view and conversions run without copies.
"""

from __future__ import annotations

import numpy as np
import torch

from .windows import WindowBatch


class DeviceFeed:
    """Moves window batches to ``device`` and model outputs back (see the module text)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pinned = device.type == "cuda"  # page-locked staging: asynchronous copies
        self._upload: torch.Tensor | None = None  # staging buffers, grown as needed
        self._download: torch.Tensor | None = None
        self._uploaded: torch.cuda.Event | None = None  # the last copy out of ``_upload``

    def windows(self, batch: WindowBatch) -> torch.Tensor:
        """uint8 (N, T, C, H, W) windows of the batch's N valid targets on the device: a strided view
        of the batch's frames sent once (window n is frames[p_n - T + 1 : p_n + 1], p_n the n-th valid
        target's position). The batch must have a valid target."""
        t = batch.window_length
        starts = batch.context + np.flatnonzero(batch.valid) - (t - 1)
        first = int(starts[0])
        frames = self._to_device(batch.frames[first:])
        stacked = frames.unfold(0, t, 1).permute(0, 4, 1, 2, 3)  # (K - first - T + 1, T, C, H, W)
        starts = starts - first
        if int(starts[-1]) == len(starts) - 1:  # consecutive targets (no gap inside the batch)
            return stacked[:len(starts)]
        return stacked[torch.from_numpy(starts).to(self.device)]

    def _to_device(self, frames: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(frames))
        if self.device.type == "cpu":
            return host
        if not self.pinned:
            return host.to(self.device)
        if self._uploaded is not None:
            self._uploaded.synchronize()  # the previous batch's copy has left the staging buffer
        staged = _grown(self._upload, host.numel(), pinned=True)
        self._upload = staged
        staged = staged[:host.numel()].view(host.shape)
        staged.copy_(host)
        on_device = staged.to(self.device, non_blocking=True)
        self._uploaded = torch.cuda.Event()
        self._uploaded.record(torch.cuda.current_stream(self.device))
        return on_device

    def to_host(self, score: torch.Tensor, anomaly_map: torch.Tensor,
                terms: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(score float32 (N,), map float16 (N, H, W), each term float32 (N,)) on the host from the
        model's device tensors (any float dtype; the map is converted on the device)."""
        scalars = torch.stack([score.float(), *(term.float() for term in terms)])  # (1 + terms, N)
        maps = anomaly_map.to(torch.float16)
        if self.device.type == "cpu":
            values, half = scalars.numpy(), maps.numpy()
        else:
            packed = torch.cat([scalars.reshape(-1).view(torch.uint8), maps.reshape(-1).view(torch.uint8)])
            self._download = _grown(self._download, packed.numel(), pinned=self.pinned)
            host = self._download[:packed.numel()]
            host.copy_(packed, non_blocking=self.pinned)
            if self.pinned:
                torch.cuda.current_stream(self.device).synchronize()
            raw = host.numpy()
            split = scalars.numel() * 4
            values = raw[:split].view(np.float32).reshape(tuple(scalars.shape)).copy()  # the buffer is reused
            half = raw[split:].view(np.float16).reshape(tuple(maps.shape)).copy()
        return values[0], half, list(values[1:])


def _grown(buffer: torch.Tensor | None, size: int, pinned: bool) -> torch.Tensor:
    """``buffer`` if it holds ``size`` bytes, else a new uint8 host buffer of at least that size
    (page-locked when ``pinned``), grown by half again so that slowly growing batches reuse it."""
    if buffer is not None and buffer.numel() >= size:
        return buffer
    return torch.empty(max(size, size * 3 // 2), dtype=torch.uint8, pin_memory=pinned)
