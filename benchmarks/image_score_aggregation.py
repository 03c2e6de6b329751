"""How a still model's image score is pooled from its anomaly map: image AUROC of each pooling.

    python benchmarks/image_score_aggregation.py runs/mtd_padim runs/mtd_favae --fuse mtd_padim,mtd_favae \
        --json benchmarks/results/mtd_image_pooling.json

Each run is scored through the Ray pipeline on the MTD test split; from the stored maps (resized to
``--side`` px, as every model sees a square image) the image score is recomputed as the map's mean
(FAVAE's paper: the sum), its max, the largest mean over a k x k box (DSR's paper: 21 px at 256) and
the mean of its top 1 % of pixels. The pooling is picked here on the test split, as MTD has no
labelled validation images: read the figures as an analysis, not as a tuned result. ``--fuse`` adds
runs' image scores fused by their mean normalised rank over the scored images (transductive, no labels).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.stats import rankdata

from anomstream.models.score_maps import max_box_mean
from anomstream.pipeline.config import ScoreSection
from anomstream.pipeline.datasets.layouts import ImageRecord
from anomstream.pipeline.driver.plan import RunPlan
from anomstream.pipeline.driver.run import score_sources
from anomstream.pipeline.evaluation.image_metrics import image_auroc
from anomstream.pipeline.evaluation.stills import scored_images


def poolings(side: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    boxes = (side // 32, side // 16, side // 12, side // 8)
    out = {"mean": lambda maps: maps.flatten(1).mean(1), "max": lambda maps: maps.flatten(1).amax(1)}
    out |= {f"max box {k}": (lambda maps, k=k: max_box_mean(maps, k)) for k in boxes}
    out["top 1 % mean"] = lambda maps: maps.flatten(1).topk(side * side // 100, dim=1).values.mean(1)
    return out


def pooled_scores(store: Path, side: int) -> tuple[list[ImageRecord], dict[str, np.ndarray]]:
    """The store's images (sorted by path) and their image scores by pooling; "model": the stored score."""
    images = sorted(scored_images(store), key=lambda i: str(i.record.path))
    maps = torch.from_numpy(np.stack([cv2.resize(i.anomaly_map, (side, side), interpolation=cv2.INTER_AREA)
                                      for i in images]))
    scores = {"model": np.array([i.score for i in images])}
    scores |= {name: pool(maps).numpy() for name, pool in poolings(side).items()}
    return [i.record for i in images], scores


def aurocs(records: list[ImageRecord], scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{pooling: {"all": AUROC, <defect class>: AUROC of that class against the normal images}}."""
    labels = np.array([r.anomalous for r in records])
    categories = np.array([r.category for r in records])
    out = {}
    for name, values in scores.items():
        out[name] = {"all": image_auroc(values, labels)}
        for defect in sorted(set(categories[labels])):
            keep = ~labels | (categories == defect)
            out[name][defect] = image_auroc(values[keep], labels[keep])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="training output folders (model.pt)")
    parser.add_argument("--data", default="../shared/data/mtd", help="MTD root")
    parser.add_argument("--seed", type=int, default=0, help="split seed (must match training)")
    parser.add_argument("--side", type=int, default=256, help="maps are resized to side x side before pooling")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--fuse", action="append", default=[], metavar="RUN,RUN",
                        help="also these runs (folder names) fused: the mean of the normalised ranks of their own "
                             "image scores (no labels used); repeatable")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results, ranks, order = {}, {}, None
    with tempfile.TemporaryDirectory() as scratch:
        for run in args.runs:
            store = Path(scratch) / f"{run.name}.zarr"
            score_sources(RunPlan(specs=[f"mtd:{args.data}?seed={args.seed}"], checkpoint=str(run / "model.pt"),
                                  out=store, settings=ScoreSection(replicas=args.replicas), mode="overwrite",
                                  progress=False))
            records, scores = pooled_scores(store, args.side)
            if order is not None and [r.path for r in records] != [r.path for r in order]:
                raise SystemExit(f"{run}: scored other images than {args.runs[0]}")
            order = records
            results[run.name] = aurocs(records, scores)
            ranks[run.name] = rankdata(scores["model"]) / len(records)
    for names in (group.split(",") for group in args.fuse):
        missing = [name for name in names if name not in ranks]
        if missing:
            raise SystemExit(f"--fuse: {', '.join(missing)} is not among the runs")
        results["fused: " + " + ".join(names)] = aurocs(order, {"model": np.mean([ranks[n] for n in names], 0)})
    classes = [c for c in next(iter(next(iter(results.values())).values())) if c != "all"]
    print(f"image AUROC by pooling (maps at {args.side} px); per class: that class against the normal images")
    print("| run | pooling | all | " + " | ".join(classes) + " |")
    print("|---|---|---|" + "---|" * len(classes))
    for run, by_pooling in results.items():
        for name, values in by_pooling.items():
            print(f"| {run} | {name} | {values['all']:.3f} | " + " | ".join(f"{values[c]:.3f}" for c in classes) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
