"""Still-image models side by side on one MTD split: score each trained run through the Ray
pipeline, evaluate, and write a markdown table, a JSON file and a worst-cases figure.

    python benchmarks/mtd_compare.py runs/mtd_padim runs/mtd_adtr runs/mtd_favae runs/mtd_ds2 \
        --data ../shared/data/mtd --json benchmarks/results/mtd_results.json --figure docs/img/mtd_worst_cases.png
    python benchmarks/mtd_compare.py runs/mtd_padim runs/mtd_adtr runs/mtd_adtr_plus --labelled 5  # ADTR+

Each run folder holds ``model.pt`` and ``train_log.jsonl`` (``anomstream train``). Train time is
the sum of the logged epoch seconds and the last density fit; scoring fps is the pipeline's (2 replicas).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from anomstream.pipeline.config import ScoreSection  # noqa: E402
from anomstream.pipeline.driver.plan import RunPlan
from anomstream.pipeline.driver.run import score_sources
from anomstream.pipeline.evaluation.stills import ScoredImage, evaluate_stills, scored_images  # noqa: E402


def train_seconds(run: Path) -> float:
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    fits = [r["fit_statistics_seconds"] for r in records if "fit_statistics_seconds" in r]
    return sum(r.get("seconds", 0.0) for r in records) + (fits[-1] if fits else 0.0)  # a refit replaces the fit


def worst_cases(images: list[ScoredImage]) -> tuple[ScoredImage, ScoredImage]:
    """The highest-scored normal image and the lowest-scored defective one."""
    normal = max((i for i in images if not i.record.anomalous), key=lambda i: i.score)
    defect = min((i for i in images if i.record.anomalous), key=lambda i: i.score)
    return normal, defect


def plot_worst(cases: dict[str, tuple[ScoredImage, ScoredImage]], path: Path) -> None:
    figure, axes = plt.subplots(len(cases), 5, figsize=(13, 2.8 * len(cases)), squeeze=False)
    for row, (name, (normal, defect)) in enumerate(cases.items()):
        panels = [(cv2.imread(str(normal.record.path))[..., ::-1], f"{name}: top normal\n{normal.record.path.name}"),
                  (normal.anomaly_map, f"map (score {normal.score:.3g})"),
                  (cv2.imread(str(defect.record.path))[..., ::-1],
                   f"lowest defect ({defect.record.category})\n{defect.record.path.name}"),
                  (defect.anomaly_map, f"map (score {defect.score:.3g})"),
                  (defect.mask, "defect mask")]
        for axis, (image, title) in zip(axes[row], panels):
            axis.imshow(image, cmap=None if image.ndim == 3 else "inferno")
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="training output folders")
    parser.add_argument("--data", default="../shared/data/mtd", help="MTD root")
    parser.add_argument("--seed", type=int, default=0, help="split seed (must match training)")
    parser.add_argument("--labelled", type=int, default=0,
                        help="defective images per type held out of test as labelled anomalies (as an ADTR+ config)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()
    spec = f"mtd:{args.data}?seed={args.seed}" + (f"&labelled={args.labelled}" if args.labelled else "")
    results, cases = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for run in args.runs:
            store = Path(scratch) / f"{run.name}.zarr"
            report = score_sources(RunPlan(specs=[spec], checkpoint=str(run / "model.pt"), out=store,
                                           settings=ScoreSection(replicas=args.replicas), mode="overwrite",
                                           progress=False))
            evaluation = evaluate_stills(store)
            name = run.name
            results[name] = {**evaluation.to_dict(), "train_seconds": round(train_seconds(run), 1),
                             "scoring_fps": round(report.frames / report.seconds, 2), "images": report.frames}
            cases[name] = worst_cases(scored_images(store))
            print(f"{name}: done", flush=True)
    print("| run | image AUROC | pixel AUROC | PRO | Blowhole I/P | Crack I/P | train min | scoring fps |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        pooled, per = r["pooled"], r["per_class"]
        by_class = ["{:.3f} / {:.3f}".format(per[c]["image_auroc"], per[c]["pixel_auroc"]) for c in ("MT_Blowhole", "MT_Crack")]
        print(f"| {name} | {pooled['image_auroc']:.3f} | {pooled['pixel_auroc']:.3f} | {pooled['pro']:.3f} | "
              f"{by_class[0]} | {by_class[1]} | {r['train_seconds'] / 60:.1f} | {r['scoring_fps']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.figure:
        plot_worst(cases, args.figure)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
