"""How much of a still model's image-level error comes from the image border (analysis, not a score).

For each run's checkpoint, on the MTD test split: image AUROC of the max of box-averaged maps over the
whole map and with a border strip left out, the share of normal images whose map maximum lies in that
strip, and the normal images' mean map on the strip relative to the interior.

    python benchmarks/border_analysis.py runs/mtd_adtr runs/mtd_adtr60 --data ../shared/data/mtd
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomstream.models.base import AnomalyModel
from anomstream.models.score_maps import max_box_mean
from anomstream.pipeline.checkpoint import load_model
from anomstream.pipeline.datasets.layouts import mtd_split
from anomstream.pipeline.files import read_image
from anomstream.pipeline.stream.preprocess import prepare_frame


def border_report(model: AnomalyModel, images: np.ndarray, defective: np.ndarray, border: int, box: int) -> str:
    """One table row: whole-map AUROC | AUROC without the border | normal maxima on it | border / interior."""
    with torch.inference_mode():
        maps = torch.cat([model.score(torch.from_numpy(images[i:i + 16])[:, None]).anomaly_map
                          for i in range(0, len(images), 16)])
    size = maps.shape[-1]
    strip = torch.ones(size, size, dtype=torch.bool)
    strip[border:-border, border:-border] = False
    whole = roc_auc_score(defective, max_box_mean(maps, box).numpy())
    interior = roc_auc_score(defective, max_box_mean(maps[:, border:-border, border:-border], box).numpy())
    normal = maps[torch.from_numpy(~defective)]
    maxima_on_strip = strip.flatten()[normal.flatten(1).argmax(1)].float().mean().item()
    ratio = (normal[:, strip].mean() / normal[:, ~strip].mean()).item()
    return (f"{whole:.3f} | {interior:.3f} | {100 * maxima_on_strip:.0f} % | {ratio:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding model.pt")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mtd"))
    parser.add_argument("--border", type=int, default=16, help="strip width in px at the model's image size")
    parser.add_argument("--box", type=int, default=16, help="box of the max-of-box-means image score, px")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, test = mtd_split(args.data)
    defective = np.array([record.category != "MT_Free" for record in test])
    print("| run | image AUROC | without border | normal maxima on border | border / interior map |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        model, _ = load_model(run / "model.pt")
        images = np.stack([prepare_frame(read_image(record.path), model.image_size, 3) for record in test])
        print(f"| {run.name} | {border_report(model, images, defective, args.border, args.box)}", flush=True)


if __name__ == "__main__":
    main()
