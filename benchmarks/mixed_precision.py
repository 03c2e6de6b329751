"""Training speed of fp32 against bf16 mixed precision (``train.precision``), measured in one run.

For each config: its model, a batch of ``train.batch_size`` real training images, AdamW; the median time of
the training loop's step (``pipeline.training.loop.gradient_step``: forward under autocast or not, backward,
optimizer step) in each precision, alternated so that both see the same machine state, and the relative
difference of the two losses on the same weights.

    python benchmarks/mixed_precision.py configs/mtd_favae.yaml configs/mtd_adtr.yaml
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from anomstream.models.base import AnomalyModel
from anomstream.models.registry import build_model
from anomstream.pipeline.config import load_config
from anomstream.pipeline.training.data import WindowDataset, load_clips
from anomstream.pipeline.training.loop import gradient_step, precision_context

PRECISIONS = ("fp32", "bf16")


def step_seconds(model: AnomalyModel, windows: torch.Tensor, optimizer: torch.optim.Optimizer, precision: str) -> float:
    started = time.perf_counter()
    gradient_step(model, windows, optimizer, precision)
    return time.perf_counter() - started


def same_weights_losses(model: AnomalyModel, windows: torch.Tensor) -> tuple[float, float]:
    losses = []
    for precision in PRECISIONS:
        torch.manual_seed(0)
        with torch.no_grad(), precision_context(precision):
            losses.append(model.training_loss(windows)["loss"].item())
    return losses[0], losses[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per precision (after 2 warm-up steps)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, oneDNN bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print("| config | batch | fp32 samples/s | bf16 samples/s | bf16 / fp32 | loss fp32 | loss bf16 | relative difference |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.configs:
        config = load_config(path)
        model = build_model(config.model.name, config.model.params).train()
        batch = config.train.batch_size
        clips = load_clips(config.train.data, model.image_size, model.channels, progress=False,
                           still_images=model.window_length == 1)
        dataset = WindowDataset(clips, model.window_length)
        windows = torch.stack([dataset[i] for i in range(batch)])
        optimizer = torch.optim.AdamW(model.parameter_groups(1e-5))
        times: dict[str, list[float]] = {precision: [] for precision in PRECISIONS}
        for step in range(2 + args.steps):
            for precision in PRECISIONS:
                seconds = step_seconds(model, windows, optimizer, precision)
                if step >= 2:
                    times[precision].append(seconds)
        fp32, bf16 = (batch / statistics.median(times[precision]) for precision in PRECISIONS)
        loss32, loss16 = same_weights_losses(model, windows)
        print(f"| {path} | {batch} | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.2f} | {loss32:.4g} | {loss16:.4g} | "
              f"{abs(loss16 - loss32) / abs(loss32):.2%} |")


if __name__ == "__main__":
    main()
