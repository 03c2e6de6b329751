"""Still-image models on every replica backend (issue 20): model-only speed-ups, and MTD accuracy
of trained checkpoints scored through the pipeline with each backend.

    python benchmarks/still_backends.py --speed                      # every still model, its CPU config
    python benchmarks/still_backends.py --speed --backends openvino:bf16 openvino:int8 openvino:int8-bf16
    python benchmarks/still_backends.py --accuracy runs/mtd_padim runs/mtd_favae16
    python benchmarks/still_backends.py --accuracy runs/mtd_dsr16 --past-the-check   # what a refusal saved

``--speed``: each model built from its ``configs/mtd_<model>.yaml`` (weights as initialised: the
graph's cost does not depend on them; models that fit statistics fit them on 16 normal MTD images),
exported once (int8: quantized by NNCF on 64 normal training images), then torch eager, ONNX
Runtime, OpenVINO fp32, bf16 and int8 timed in interleaved rounds on the same 32 MTD test images
(batch 16, 2 threads; medians of 3 rounds): images/s and the ratio to torch. ``--accuracy``: each
run's ``model.pt`` scores the MTD test split (DS2 protocol, seed 0) through ``score_sources`` (2
replicas) with each backend (int8: quantized on the training split's normal images); image / pixel
AUROC and their difference
to torch's (pooled over the split: :func:`pipeline.evaluation.backends.backend_accuracy`). Prints
markdown tables. ``--past-the-check`` (a measurement only, never a run's behaviour): the start-of-run
check's thresholds set to nothing, so a precision it refuses by rank agreement or map correlation, or an
fp32 runtime it refuses by its tolerance, is scored anyway (a constant or not finite output is still
refused), and its figures printed: whether the AUROC agrees with a refusal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mtd"
BACKENDS = [("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
NORMAL = f"mtd:{DATA}?split=train&seed=0"  # int8's footage: the training split's normal images
STILL_CONFIGS = ["mtd_padim", "mtd_favae", "mtd_adtr", "mtd_dsr", "mtd_ds2"]


def _windows(paths: list[Path], size: int, channels: int) -> torch.Tensor:
    from anomstream.pipeline.files import read_image
    from anomstream.pipeline.stream.preprocess import prepare_frame

    return torch.from_numpy(np.stack([prepare_frame(read_image(p), size, channels)[None] for p in paths]))


LABELS = {"torch": "torch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def speed(rounds: int = 3, batch: int = 16, models: list[str] | None = None,
          backends: list[tuple[str, str]] | None = None) -> None:
    from anomstream.models.registry import build_model
    from anomstream.pipeline.backends.graph import export_onnx
    from anomstream.pipeline.backends.quantize import quantize_int8
    from anomstream.pipeline.backends.runners import make_runner
    from anomstream.pipeline.config import load_config
    from anomstream.pipeline.datasets.layouts import mtd_split

    torch.set_num_threads(2)
    train, test = mtd_split(DATA)
    backends = [("torch", "fp32"), *(key for key in backends or BACKENDS if key != ("torch", "fp32"))]
    print("| model (config) | torch images/s | " + " | ".join(f"{LABELS[name]} {precision}" for name, precision in backends[1:])
          + " |")
    print("| --- " * (len(backends) + 1) + "|")
    for name in models or STILL_CONFIGS:
        config = load_config(REPO / "configs" / f"{name}.yaml")
        torch.manual_seed(0)
        model = build_model(config.model.name, config.model.params).eval()
        size, channels = model.image_size, model.channels
        windows = _windows([r.path for r in test[:32]], size, channels)
        normal = _windows([r.path for r in train[:64]], size, channels)
        if model.fits_statistics:
            model.fit_statistics([normal[:8], normal[8:16]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = export_onnx(model)
        scorers = {}
        quantized = None
        for backend, precision in backends:
            if backend == "torch":
                scorers[(backend, precision)] = model.score
            else:
                if precision.startswith("int8") and quantized is None:
                    quantized = quantize_int8(graph, [normal[i:i + 16].numpy() for i in range(0, 64, 16)],
                                              model.float_scopes())
                made = quantized if precision.startswith("int8") else graph
                scorers[(backend, precision)] = make_runner(backend, made, model.term_names, 2, precision,
                                                            images_per_call=model.images_per_graph_call()).score
        samples: dict[tuple[str, str], list[float]] = {key: [] for key in scorers}
        for score in scorers.values():  # warm-up: every batch shape once
            with torch.inference_mode():
                score(windows[:batch])
        for _ in range(rounds):
            for key, score in scorers.items():
                started = time.perf_counter()
                with torch.inference_mode():
                    for start in range(0, len(windows), batch):
                        score(windows[start:start + batch])
                samples[key].append(len(windows) / (time.perf_counter() - started))
        fps = {key: statistics.median(values) for key, values in samples.items()}
        base = fps[("torch", "fp32")]
        cells = [f"{fps[key]:.1f}" + ("" if key == ("torch", "fp32") else f" ({fps[key] / base:.2f}x)") for key in fps]
        print(f"| {config.model.name} (`{name}`) | " + " | ".join(cells) + " |", flush=True)


def accuracy(runs: list[Path], replicas: int = 2, backends: list[tuple[str, str]] | None = None) -> None:
    from anomstream.pipeline.backends.runners import CheckRefusal
    from anomstream.pipeline.config import ScoreSection
    from anomstream.pipeline.errors import AnomstreamError
    from anomstream.pipeline.evaluation.backends import backend_accuracy

    print("| run | backend | image AUROC | pixel AUROC | image diff to torch | pixel diff | pipeline fps |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as scratch:
        for run in runs:
            reference = None
            for backend, precision in backends or BACKENDS:
                store = Path(scratch) / f"{run.name}_{backend}_{precision}.zarr"
                settings = ScoreSection(replicas=replicas, backend=backend, precision=precision,
                                        quantization_data=[NORMAL] if precision.startswith("int8") else [])
                try:  # the MTD test split, DS2 protocol, seed 0 (what anomstream bench --accuracy mtd:ROOT scores)
                    row = backend_accuracy(str(run / "model.pt"), f"mtd:{DATA}", precision, settings, store)
                except AnomstreamError as error:  # the start-of-run check's verdict is a result too; a failure a line
                    kind = "refused" if isinstance(error, CheckRefusal) else "failed"
                    print(f"| {run.name} | {backend} {precision} | {kind}: {error} | | | | |", flush=True)
                    continue
                image, pixel = row.micro_auc, row.pixel_auroc
                reference = reference or (image, pixel)
                print(f"| {run.name} | {backend} {precision} | {image:.4f} | {pixel:.4f} | {image - reference[0]:+.4f} | "
                      f"{pixel - reference[1]:+.4f} | {row.fps:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", action="store_true", help="model-only images/s of every still model per backend")
    parser.add_argument("--accuracy", nargs="*", type=Path, default=[], metavar="RUN",
                        help="run folders (model.pt) scored on the MTD test split with every backend")
    parser.add_argument("--models", nargs="*", default=None, metavar="CONFIG", help="--speed: these configs only")
    parser.add_argument("--backends", nargs="*", default=None, metavar="BACKEND[:PRECISION]",
                        help="these only (torch onnxruntime openvino openvino:bf16 openvino:int8 "
                             "openvino:int8-bf16); --accuracy: the differences are to the first; --speed: to torch, "
                             "always measured")
    parser.add_argument("--past-the-check", action="store_true",
                        help="--accuracy: score what the start-of-run check refuses too, printing its figures")
    parser.add_argument("--batch", type=int, default=16, help="--speed: images per batch (DS2's graph: 4 images per call)")
    args = parser.parse_args()
    if not (args.speed or args.accuracy):
        parser.error("give --speed and/or --accuracy RUN ...")
    chosen = [tuple((name + ":fp32").split(":")[:2]) for name in args.backends] if args.backends else None
    if args.speed:
        speed(batch=args.batch, models=args.models, backends=chosen)
    if args.accuracy and args.past_the_check:
        _disable_the_check()
    if args.accuracy:
        accuracy(args.accuracy, backends=chosen)


def _disable_the_check() -> None:
    """The start-of-run check with no threshold (fp32's tolerance, the reduced precisions' rank
    agreement and map correlation), printing what it measured."""
    from anomstream.pipeline.backends import choice

    choice.MAP_CORRELATION = choice.RANK_AGREEMENT = -1.0
    choice.TOLERANCE["fp32"] = float("inf")
    measure, differ = choice.GraphCache.rank_agreement, choice.GraphCache.parity

    def parity(cache: choice.GraphCache, backend: str, precision: str) -> dict[str, float]:
        found = differ(cache, backend, precision)
        print(f"check {backend} {precision} (differences over the range of torch's; the map's 75 % quantile, "
              f"correlation, whether the graph makes discrete choices): "
              + ", ".join(f"{name} {value:.2g}" for name, value in found.items()), flush=True)
        return found

    choice.GraphCache.parity = parity

    def shown(cache: choice.GraphCache, backend: str, precision: str) -> dict[str, float]:
        found = measure(cache, backend, precision)
        print(f"check {backend} {precision}: " + ", ".join(f"{name} {value:.3f}" for name, value in found.items()),
              flush=True)
        return found

    choice.GraphCache.rank_agreement = shown


if __name__ == "__main__":
    sys.exit(main())
