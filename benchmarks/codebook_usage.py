"""Codewords in use of every vector quantiser of a trained model over a source's windows: a check for
codebook collapse (DSR's stage-1 EMA codebook once used 5 of 512 codes; docs/results.md).

    python benchmarks/codebook_usage.py configs/weights/ped2_dmad_cpu.pt ../shared/data/ped2/testing/frames
    python benchmarks/codebook_usage.py runs/mtd_dsr/model.pt "mtd:../shared/data/mtd?split=test"

Counts every call of a quantiser while the model scores (DSR's detection stage also re-quantises its
restricted features with the same codebooks; those assignments count too).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from anomstream.models.vector_quantizer import VectorQuantizer
from anomstream.pipeline.checkpoint import load_model
from anomstream.pipeline.sources.resolve import open_sources
from anomstream.pipeline.stream.preprocess import prepare_frame
from anomstream.pipeline.training.data import WindowDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("source", help="frames / video / dataset spec, scored as by anomstream score")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    model, _ = load_model(args.checkpoint)
    model.eval()
    counts: dict[str, np.ndarray] = {}

    def counter(name: str, size: int):
        counts[name] = np.zeros(size, dtype=np.int64)

        def count(module: VectorQuantizer, inputs: tuple, output: tuple) -> None:
            counts[name] += np.bincount(output[2].flatten().numpy(), minlength=size)
        return count

    for name, module in model.named_modules():
        if isinstance(module, VectorQuantizer):
            module.register_forward_hook(counter(name, len(module.codebook)))
    if not counts:
        raise SystemExit(f"error: {args.checkpoint}: model has no vector quantiser")
    windows = 0
    with torch.no_grad():
        for source in open_sources(args.source, still_images=model.window_length == 1, dataset_split="test"):
            clip = np.stack([prepare_frame(frame.image, model.image_size, model.channels) for frame in source.frames()])
            dataset = WindowDataset([clip], model.window_length)
            for start in range(0, len(dataset), args.batch_size):
                model.score(torch.stack([dataset[i] for i in range(start, min(start + args.batch_size, len(dataset)))]))
            windows += len(dataset)
    print(f"{windows} windows")
    for name, used in counts.items():
        share = np.sort(used)[::-1] / max(used.sum(), 1)
        print(f"{name}: {(used > 0).sum()} of {len(used)} codewords used, {(share >= 0.01).sum()} with >= 1 % of "
              f"positions, the 10 most used hold {share[:10].sum():.0%}")


if __name__ == "__main__":
    main()
