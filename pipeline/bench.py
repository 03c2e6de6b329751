"""``anomstream bench``: throughput of each stage on one clip, and the pipeline's ratios to them.

Measured in one run, on the same clip and batch size:
- decode-only: source -> prepared window batches, no model;
- model-only: the replica's scoring on batches already in memory (all cores to torch);
- naive loop: decode -> model -> zarr in one process;
- pipeline: the Ray pipeline with 1 and 2 replicas (actors started before the clock runs), with
  the share of the run each replica spent inside its model (busy).
With several ``backends`` (``torch``, ``onnxruntime``, ``openvino``, ``openvino:bf16``: a backend and
its precision), model-only and 2-replica pipeline fps are measured for each in the same rounds
(``model_fps_<backend>``, ``pipeline2_fps_<backend>``) with their ratios to torch and to their own
model-only fps; the naive loop is torch's, the 1-replica pipeline runs on the first backend.
The clip is repeated as several streams so that each timing covers enough frames. The machine's
speed drifts by 10 % or more between seconds-long timings, so the measurements are taken in
``rounds`` interleaved rounds and each figure is the median over the rounds; ratios are taken
between medians.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .backends.choice import BackendChoice, GraphCache, choose_backend
from .backends.verdict import matrix_flags
from .calibration.stored import run_calibration
from .checkpoint import model_from_payload, read_checkpoint_and_hash, set_reference_maps
from .config import ScoreSection
from .driver.plan import RunPlan
from .driver.ray_setup import ensure_ray
from .driver.run import score_sources
from .errors import AnomstreamError
from .sources.base import model_frames
from .sources.resolve import open_sources
from .stream.naive import naive_score
from .stream.scorer import Scorer
from .stream.windows import WindowBatch, window_batches

if TYPE_CHECKING:
    from .evaluation.backends import BackendAccuracy

STAGES = ("model_fps", "naive_fps", "pipeline1_fps", "pipeline2_fps")


@dataclass(frozen=True)
class BenchOptions:
    """How ``anomstream bench`` measures: windows per ``batch_size``; the clip scored ``repeats`` times
    per measurement; ``rounds`` interleaved rounds; the ``backends`` side by side (``openvino:int8``:
    a backend and its precision; the first the reference); ``device`` (``--device``; None: auto) where
    model-only scores and what the pipeline's replicas are told; ``quantization_data``: the int8
    backends' normal footage (default: the footage the checkpoint's calibration was fitted on);
    ``out``: the folder a temporary one for the scratch stores is made in."""

    batch_size: int = 16
    repeats: int = 4
    rounds: int = 3
    backends: tuple[str, ...] = ("torch",)
    device: str | None = None
    quantization_data: tuple[str, ...] = ()
    out: str = "bench_out"


@contextlib.contextmanager
def _scratch(out: str, prefix: str) -> Iterator[Path]:
    """A new temporary folder inside ``out`` (made if missing) for scratch stores, removed at the end,
    and ``out`` too when it was made here and is left empty: nothing else in it is touched."""
    made = not Path(out).exists()
    Path(out).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=out))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if made and not any(Path(out).iterdir()):
            Path(out).rmdir()


def _decoded_batches(spec: str, core: Scorer, batch_size: int) -> list[WindowBatch]:
    model = core.model
    source = open_sources(spec)[0]
    items = window_batches(model_frames(source, model.channels), source.stream_id, model.window_length, batch_size,
                           model.image_size, model.channels)
    return [b for b in items if isinstance(b, WindowBatch)]


def _model_fps(core: Scorer, batches: list[WindowBatch], repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        for batch in batches:
            core.score(batch)
    return repeats * sum(b.size for b in batches) / (time.perf_counter() - started)


def check_backend_specs(text: str | None) -> list[str]:
    """``--backends`` (comma-separated ``BACKEND[:PRECISION]``; None: torch) as a list, each checked
    before anything is measured; one-line AnomstreamError naming the first that is not one."""
    from .backends.choice import PRECISIONS
    from .backends.runners import BACKENDS

    specs = [spec.strip() for spec in (text or "torch").split(",") if spec.strip()]
    if not specs:
        raise AnomstreamError(f"--backends {text!r}: no backend named; e.g. torch,openvino,openvino:int8-bf16")
    for spec in specs:
        name, precision, _ = backend_label(spec)
        if name not in BACKENDS or precision not in PRECISIONS or precision == "auto":
            raise AnomstreamError(f"--backends: {spec!r} is not BACKEND[:PRECISION] with BACKEND one of "
                                  f"{', '.join(BACKENDS)} and PRECISION one of {', '.join(PRECISIONS[1:])}")
    return specs


def backend_label(spec: str) -> tuple[str, str, str]:
    """``openvino:bf16`` -> (``openvino``, ``bf16``, ``openvino_bf16``); a name alone is fp32."""
    name, _, precision = spec.partition(":")
    precision = precision or "fp32"
    return name, precision, name if precision == "fp32" else f"{name}_{precision}"


def _backend_scorers(checkpoint: str, options: BenchOptions, threads: int) -> dict[str, tuple[Scorer, BackendChoice]]:
    """label -> (a Scorer on that backend, the choice; torch on ``options.device``), each checked against torch first."""
    payload, sha256 = read_checkpoint_and_hash(checkpoint)
    calibrated = run_calibration(payload, sha256, None)
    reference = calibrated.reference if calibrated else None
    model = set_reference_maps(model_from_payload(payload, checkpoint), reference)
    cache = GraphCache.for_run(model, checkpoint, sha256, calibrated, list(options.quantization_data))
    scorers = {}
    for spec in options.backends:
        name, precision, label = backend_label(spec)
        choice = choose_backend(name, precision, cache)
        scorers[label] = (Scorer(payload, threads=threads, device=options.device, reference=reference, backend=choice),
                          choice)
    return scorers


def _pipeline_fps(samples: dict[str, list[float]], scorers: dict, spec: str, checkpoint: str, options: BenchOptions,
                  out_dir: Path) -> None:
    """One round of the Ray pipeline: 1 replica on the first backend, 2 replicas on each; appended
    to ``samples`` (fps, busy share; per backend when several are compared)."""
    labels = list(scorers) if len(scorers) > 1 else []
    first, device = next(iter(scorers)), options.device or "auto"
    for replicas, label in [(1, None), *((2, label) for label in scorers)]:
        choice = scorers[label or first][1]
        # replicas score on the GPU Ray gives them (not cuda:N); the CPU runtimes' rounds on the CPU
        replica_device = "cpu" if choice.backend != "torch" else "cuda" if device.startswith("cuda") else device
        settings = ScoreSection(batch_size=options.batch_size, replicas=replicas, backend=choice.backend,
                                precision=choice.precision, device=replica_device,
                                quantization_data=list(options.quantization_data))
        report = score_sources(RunPlan(specs=[spec] * options.repeats, checkpoint=checkpoint,
                                       out=out_dir / f"pipeline{replicas}.zarr",
                                       settings=settings, mode="overwrite", progress=False,
                                       max_active_streams=replicas + 1))
        fps = report.frames / report.seconds
        if label is None or label == first:
            samples[f"pipeline{replicas}_fps"].append(fps)
            samples[f"pipeline{replicas}_busy"].append(statistics.mean(report.replica_busy))
        if label is not None and labels:
            samples[f"pipeline2_fps_{label}"].append(fps)


def _ratios(results: dict[str, float], labels: list[str]) -> None:
    """The pipeline's and the backends' ratios, between medians."""
    results["pipeline1_over_model"] = results["pipeline1_fps"] / results["model_fps"]
    results["pipeline1_over_naive"] = results["pipeline1_fps"] / results["naive_fps"]
    results["pipeline2_over_model"] = results["pipeline2_fps"] / results["model_fps"]
    results["naive_over_model"] = results["naive_fps"] / results["model_fps"]
    for label in labels[1:]:
        results[f"model_{label}_over_{labels[0]}"] = results[f"model_fps_{label}"] / results[f"model_fps_{labels[0]}"]
    for label in labels:
        results[f"pipeline2_{label}_over_model"] = results[f"pipeline2_fps_{label}"] / results[f"model_fps_{label}"]


def run_bench(spec: str, checkpoint: str, options: BenchOptions = BenchOptions()) -> dict[str, float]:
    """Every stage's fps on clip ``spec`` (medians of ``options.rounds`` interleaved rounds) and their
    ratios. Scratch stores go into a new temporary folder inside ``options.out`` (made if missing),
    removed at the end: nothing else in it is touched."""
    cores = os.cpu_count() or 1
    out, batch_size, repeats, rounds = options.out, options.batch_size, options.repeats, options.rounds
    with _scratch(out, "anomstream-bench-") as out_dir:
        scorers = _backend_scorers(checkpoint, options, cores)
        core = next(iter(scorers.values()))[0]
        started = time.perf_counter()
        batches = _decoded_batches(spec, core, batch_size)
        count = sum(b.size for b in batches)
        results: dict[str, float] = {"decode_fps": count / (time.perf_counter() - started)}
        for scorer, _ in scorers.values():
            for batch in batches:  # warm-up: every batch shape once
                scorer.score(batch)

        labels = list(scorers) if len(scorers) > 1 else []
        samples: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "pipeline1_busy", "pipeline2_busy",
                                                                     *(f"model_fps_{label}" for label in labels),
                                                                     *(f"pipeline2_fps_{label}" for label in labels))}
        for round_number in range(rounds):
            torch.set_num_threads(cores)
            for label, (scorer, _) in scorers.items():
                fps = _model_fps(scorer, batches, repeats)
                if scorer is core:
                    samples["model_fps"].append(fps)
                if labels:
                    samples[f"model_fps_{label}"].append(fps)
            started = time.perf_counter()
            naive_frames = sum(naive_score(spec, checkpoint, out_dir / f"naive{i}.zarr", batch_size, cores)
                               for i in range(repeats))
            samples["naive_fps"].append(naive_frames / (time.perf_counter() - started))
            torch.set_num_threads(1)  # the driver only waits from here on
            ensure_ray()
            _pipeline_fps(samples, scorers, spec, checkpoint, options, out_dir)
            print(f"round {round_number + 1}/{rounds}: " + "  ".join(f"{k} {v[-1]:.2f}" for k, v in samples.items()),
                  flush=True)
    results.update({key: statistics.median(values) for key, values in samples.items()})
    _ratios(results, labels)
    results["rounds"] = rounds
    print(f"clip {spec}: {count} frames x {repeats}, batch {batch_size}, {cores} cores, torch {torch.__version__}, "
          f"CPU flags {matrix_flags()}, backends {', '.join(options.backends)}, medians of {rounds} rounds")
    for key, value in results.items():
        print(f"{key:24s} {value:8.2f}")
    return results


def run_accuracy(checkpoint: str, accuracy: str, options: BenchOptions = BenchOptions(),
                 save_verdict: bool = False) -> dict[str, float]:
    """Each of ``options.backends``' frame AUC and events (an image test set: image and pixel AUROC)
    on the labelled test set ``accuracy`` (``DATASET:ROOT``, :mod:`pipeline.evaluation.backends`),
    against the first backend's, printed as a table; a backend the start-of-run check refuses is a
    line saying so, as is one that fails for another cause (its footage not found).
    ``save_verdict``: keep the reduced precisions' verdict for this checkpoint in the user's cache
    (what ``--precision auto`` reads; the first backend must compute in fp32): their AUC, or the
    check's refusal, and the frames per second through the pipeline of each reduced precision and
    each fp32 runtime (not torch's)."""
    from .backends.runners import CheckRefusal
    from .evaluation.backends import STILL_SETS, backend_accuracy, parse_accuracy

    dataset, _ = parse_accuracy(accuracy)
    backends, out = list(options.backends), options.out
    if save_verdict and backend_label(backends[0])[1] != "fp32":
        raise AnomstreamError("--save-verdict: the first backend is the reference and must compute in fp32")
    measured, unmeasured = {}, []  # unmeasured: (spec, "refused" by the start-of-run check or "failed", why)
    with _scratch(out, "anomstream-accuracy-") as out_dir:
        for spec in backends:
            name, precision, label = backend_label(spec)
            settings = ScoreSection(replicas=2, backend=name, precision=precision,
                                    quantization_data=list(options.quantization_data))
            try:
                measured[spec] = backend_accuracy(checkpoint, accuracy, label, settings, out_dir / f"{label}.zarr")
            except AnomstreamError as error:  # one backend's failure is a line; the others are still measured
                if spec == backends[0]:
                    raise
                unmeasured.append((spec, "refused" if isinstance(error, CheckRefusal) else "failed", str(error)))
    first, still = measured[backends[0]], dataset in STILL_SETS
    print(f"{dataset} test set, {checkpoint}: " + ("stored score's image AUROC, pooled pixel AUROC, events" if still
          else "stored score's micro AUC (macro, offline min-max micro), events"))
    results: dict[str, float] = {}
    for row in measured.values():
        print(_accuracy_line(row, first, still))
        results.update(_accuracy_results(row, first, still))
    for spec, kind, why in unmeasured:  # a refusal without score's advice (--precision fp32)
        print(f"{backend_label(spec)[2]:18s} " + (f"refused by the start-of-run check: {_check_clause(why)}"
                                                  if kind == "refused" else f"failed: {why}"))
    if save_verdict:
        print(f"verdict: {_keep_verdict(checkpoint, f'{dataset} test set', measured, unmeasured, still)}")
    return results


def _keep_verdict(checkpoint: str, test_set: str, measured: dict[str, BackendAccuracy],
                  unmeasured: list[tuple[str, str, str]], still: bool) -> str:
    """The verdict of ``measured`` (backend spec -> its figures; the first the fp32 reference) and of
    the reduced precisions the start-of-run check refused (``unmeasured`` rows ``refused``) kept in
    the user's cache: the file, or why nothing was kept."""
    from .backends.verdict import Verdict, save_verdict

    first, source = next(iter(measured.values())), f"{test_set}, {time.strftime('%Y-%m-%d')}, CPU flags {matrix_flags()}"
    reduced = [(backend_label(s)[1], row) for s, row in measured.items() if backend_label(s)[1] != "fp32"]
    refused = {backend_label(spec)[1]: f"{_check_clause(why)} ({source})" for spec, kind, why in unmeasured
               if kind == "refused" and backend_label(spec)[1] != "fp32"}
    if not reduced and not refused:
        what = ", ".join(f"{backend_label(spec)[2]} {kind}" for spec, kind, _ in unmeasured) or "none asked for"
        return f"no reduced precision was measured or refused ({what}); nothing kept"
    runtimes = [(backend_label(s)[0], row) for s, row in measured.items() if backend_label(s)[1] == "fp32"]
    lost = {f"fp32:{backend_label(spec)[0]}": math.nan for spec, _, _ in unmeasured  # an earlier speed of it: dropped
            if backend_label(spec)[1] == "fp32"}
    verdict = Verdict({"fp32": first.micro_auc, **{precision: row.micro_auc for precision, row in reduced}},
                      {precision: row.events_agree(first) for precision, row in reduced}, source,
                      {"fp32": first.pixel_auroc, **{p: row.pixel_auroc for p, row in reduced}} if still else {},
                      {**lost, **{f"fp32:{name}": row.fps for name, row in runtimes if name != "torch"},  # torch: a GPU?
                       **{precision: row.fps for precision, row in reduced}}, refused)
    path = save_verdict(read_checkpoint_and_hash(checkpoint)[1], verdict)
    return f"{path}" + (f" ({', '.join(refused)} refused)" if refused else "")


def _check_clause(refusal: str) -> str:
    """The start-of-run check's refusal without the backend it names first and its advice after
    (``--backend openvino --precision bf16: its map ...; use --precision fp32`` -> ``its map ...``)."""
    return refusal.partition(": ")[2].removesuffix("; use --precision fp32") or refusal


def _accuracy_results(row: BackendAccuracy, first: BackendAccuracy, still: bool) -> dict[str, float]:
    """One backend's figures for ``--json``: a video test set's frame AUCs and events, an image test
    set's image and pixel AUROC (with their differences to the reference's) and events."""
    if still:
        return {f"image_auroc_{row.label}": row.micro_auc, f"image_auroc_diff_{row.label}": row.micro_auc - first.micro_auc,
                f"pixel_auroc_{row.label}": row.pixel_auroc,
                f"pixel_auroc_diff_{row.label}": row.pixel_auroc - first.pixel_auroc,
                f"events_{row.label}": len(row.events), f"accuracy_pipeline_fps_{row.label}": row.fps}
    return {f"micro_auc_{row.label}": row.micro_auc, f"micro_auc_diff_{row.label}": row.micro_auc - first.micro_auc,
            f"offline_micro_auc_{row.label}": row.offline_micro_auc, f"events_{row.label}": len(row.events),
            f"accuracy_pipeline_fps_{row.label}": row.fps}


def _accuracy_line(row: BackendAccuracy, first: BackendAccuracy, still: bool) -> str:
    """One backend's line of the accuracy table against the reference's (``first``)."""
    shift = row.event_shift(first)
    moved = 'same' if shift == 0 else 'differ' if shift is None else f'shifted up to {shift} frames'
    events = f"events {len(row.events)} ({moved})"
    if still:
        return (f"{row.label:18s} image {row.micro_auc:.4f} ({row.micro_auc - first.micro_auc:+.4f})  pixel "
                f"{row.pixel_auroc:.4f} ({row.pixel_auroc - first.pixel_auroc:+.4f})  {events}  pipeline {row.fps:.1f} images/s")
    return (f"{row.label:18s} micro {row.micro_auc:.6f} ({row.micro_auc - first.micro_auc:+.6f})  macro "
            f"{row.macro_auc:.6f}  offline {row.offline_micro_auc:.6f}  {events}  pipeline {row.fps:.1f} fps")
