"""The ``anomstream`` command line: demo, train, calibrate, score, live, eval, bench."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

from ..models.errors import ModelInputError
from .assets import SHIPPED_CHECKPOINT
from .datasets.layouts import LAYOUT_SPLITS
from .driver.signals import stop_on_signals
from .errors import AnomstreamError, UndefinedMetricError, cause_line

STILL_DATASETS = tuple(LAYOUT_SPLITS)



def _cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainSection, load_config, with_overrides
    from .training.loop import train

    config = load_config(args.config)
    if config.train is None and not args.data:
        raise AnomstreamError(f"{args.config}: no train: section; add one (train.data: the normal data) or pass --data")
    section = config.train or TrainSection.model_construct(data=args.data)
    if _device(args):
        from .checkpoint import choose_device

        choose_device(_device(args), "--device")  # before any data is decoded: one line if it is not there
    config.train = with_overrides(section, {"data": args.data, "epochs": args.epochs, "output_dir": args.output_dir,
                                            "device": _device(args)},
                                  {"data": "--data", "epochs": "--epochs", "output_dir": "--output-dir",
                                   "device": "--device"})
    if args.stage1:
        if not hasattr(config.model.params, "stage1_checkpoint"):
            raise AnomstreamError(f"--stage1: model {config.model.name} has no stage-1 checkpoint")
        config.model.params.stage1_checkpoint = args.stage1
    path = train(config, resume=args.resume, progress=not args.quiet)
    print(f"checkpoint: {path}")
    return 0


def _score_settings(args: argparse.Namespace):
    """The config's score section with command-line overrides (validated as the config is), and
    the model the config names."""
    from .backends.choice import check_quantization_data
    from .config import ScoreSection, check_device_name, load_score_config, with_overrides

    check_quantization_data(args.quantization_data)
    if _device(args):
        check_device_name(_device(args))  # its form; whether the cluster has the device: the run checks
    section, model_name = load_score_config(args.config) if args.config else (ScoreSection(), None)
    settings = with_overrides(section,
                              {"replicas": args.replicas, "batch_size": args.batch_size, "backend": args.backend,
                               "precision": args.precision, "writers": args.writers, "device": _device(args),
                               "quantization_data": args.quantization_data},
                              {"replicas": "--replicas", "batch_size": "--batch-size", "backend": "--backend",
                               "precision": "--precision", "writers": "--writers", "device": "--device",
                               "quantization_data": "--quantization-data"})
    return settings, model_name


def _mode(args: argparse.Namespace) -> str:
    if args.overwrite and args.resume:
        raise AnomstreamError("--overwrite and --resume exclude each other")
    return "overwrite" if args.overwrite else "resume" if args.resume else "create"


SCORE_CONNECT_TIMEOUT_S = 30.0  # score's --connect-timeout when not given; live's is None


def _connect_timeout(args: argparse.Namespace) -> float | None:
    """``--connect-timeout`` as the command uses it: the value given, else 30 s under ``score`` and
    None under ``live`` (retried as long as ``--reconnect-attempts`` allows)."""
    if args.connect_timeout is not None:
        return args.connect_timeout
    return SCORE_CONNECT_TIMEOUT_S if args.command == "score" else None


def _cmd_score(args: argparse.Namespace) -> int:
    """``score``: every input scored on its own; each failure printed, exit 2 if any."""
    from .sources.camera import Reconnect
    from .sources.resolve import SourceOptions
    from .stream.live import LiveOptions

    options = SourceOptions(args.max_frames, reconnect=Reconnect(connect_timeout_s=_connect_timeout(args)))
    return _run_scoring(args, options, LiveOptions(policy="every"))  # a camera under score: every frame it sends


def _cmd_live(args: argparse.Namespace) -> int:
    """``live``: cameras and streams (and recordings played in real time) scored as they come."""
    from .sources.camera import Reconnect
    from .sources.network import Decoding
    from .sources.resolve import SourceOptions
    from .store.rotation import ROTATIONS
    from .stream.live import LiveOptions

    reconnect = Reconnect(attempts=args.reconnect_attempts, stall_timeout_s=args.stall_timeout,
                          connect_timeout_s=_connect_timeout(args), auth_retries=args.auth_retries,
                          auth_backoff_s=args.auth_backoff)
    decoding = Decoding(threads=args.decoder_threads, scale_in_decoder=args.scale_in_decoder)
    options = SourceOptions(args.max_frames, reconnect=reconnect, realtime=True, decoding=decoding)
    live = LiveOptions(policy=args.policy, max_latency_ms=args.max_latency_ms, frozen_after_s=args.frozen_after or None,
                       maps_every=args.keep_maps)
    served = {"view": (args.view_host, args.view) if args.view is not None else None,
              "metrics": (args.view_host, args.metrics) if args.metrics is not None else None}
    if args.cameras:
        from .sources.cameras_file import read_cameras

        served["cameras"] = tuple(read_cameras(args.cameras, args.checkpoint))
    if args.view is not None or args.metrics is not None:
        from .view.access import view_token

        served["view_token"] = view_token(args.view_host, args.view_token_file)
    return _run_scoring(args, options, live, args.duration, served, ROTATIONS.get(args.rotate))


def _inputs(args: argparse.Namespace, cameras) -> tuple[list[str], list[str | None]]:
    """Source specs and their stream names (None: the input's own): the command line's, a
    cameras file's, a manifest's. Raises AnomstreamError when there is none."""
    specs, stream_ids = list(args.sources), [None] * len(args.sources)
    for camera in cameras:
        specs.append(camera.url)
        stream_ids.append(camera.name)
    if getattr(args, "manifest", None):
        from .sources.manifest import read_manifest

        listed = read_manifest(args.manifest)
        specs += [spec for spec, _ in listed]
        stream_ids += [stream_id for _, stream_id in listed]
    if not specs:
        raise AnomstreamError(f"{args.command}: no input: give sources, "
                              f"{'or --cameras FILE' if args.command == 'live' else 'or --manifest FILE'}")
    return specs, stream_ids


def _run_scoring(args: argparse.Namespace, options, live=None, duration_s: float | None = None,
                 served: dict | None = None, rotate_s: float | None = None) -> int:
    """``served``: RunPlan's view, metrics and view_token (live)."""
    from .driver.plan import RunPlan
    from .driver.run import score_sources
    from .events.recorder import EventOptions, events_folder
    from .stream.live import LiveOptions

    settings, model_name = _score_settings(args)
    events = EventOptions(args.event_threshold, args.event_low, args.event_end_after, args.event_min_frames,
                          args.event_merge_gap, args.webhook, args.mqtt)
    specs, stream_ids = _inputs(args, (served or {}).get("cameras", ()))
    plan = RunPlan(specs=specs, stream_ids=stream_ids, checkpoint=args.checkpoint, expected_model=model_name,
                   calibration=args.calibration, out=args.out, mode=_mode(args), rotate_s=rotate_s, settings=settings,
                   source_options=options, live=live or LiveOptions(), duration_s=duration_s, events=events, **(served or {}),
                   address=args.address, progress=not args.quiet, stop=getattr(args, "stop", None))
    report = score_sources(plan)
    if plan.stop is not None and plan.stop.is_set() and not report.started:
        print("stopped while the run started: nothing was read or written", file=sys.stderr)
    if report.streams and not report.started:  # a resume found each stream complete, or refused it
        complete = sum(stream.skipped for stream in report.streams.values())
        refused = len(report.streams) - complete
        print(f"store: {report.store}  streams: {len(report.streams)}  nothing to score: {complete} complete already"
              f"{f', {refused} refused (below)' if refused else ''} (--overwrite scores them again)")
    elif report.streams:
        store = Path(report.store)
        where = f"{store.with_name(store.stem + '-*' + store.suffix)} (one per period)" if rotate_s else report.store
        backend = "" if report.backend.backend == "torch" else f"{report.backend.backend} {report.backend.precision}, "
        print(f"store: {where}  streams: {len(report.streams)}  frames: {report.frames}  "
              f"{report.frames / max(report.seconds, 1e-9):.1f} fps  replicas: {report.replicas} ({report.device}, {backend}"
              f"busy {'/'.join(f'{b:.0%}' for b in report.replica_busy)}"
              f"{f', on {len(report.nodes)} nodes' if len(report.nodes) > 1 else ''})")
    if report.faults.counts:
        survived = ", ".join(f"{kind.replace('_', ' ')} {count}" for kind, count in sorted(report.faults.counts.items()))
        print(f"faults survived: {survived}")
    if report.events or report.undelivered:
        left = f"; {report.undelivered} message(s) not delivered yet, kept in the outbox" if report.undelivered else ""
        print(f"events: {report.events} ({events_folder(report.store)}){left}")
    for problem in getattr(report.undelivered, "problems", ()):  # an outbox.Undelivered: each delivery failure
        print(f"warning: {problem}", file=sys.stderr)
    for rejection in report.left_out:
        print(f"warning: left out {rejection.reason}", file=sys.stderr)
    for rejection in report.failed:
        print(f"error: {rejection.reason}", file=sys.stderr)
    for stream_id, stream in report.streams.items():
        if args.command == "live" and stream.accounting:
            print(_live_summary(stream_id, stream.accounting))
        for message in stream.warnings:
            print(f"warning: {stream_id}: {message}", file=sys.stderr)
        if stream.error:
            kept = stream.stored + stream.frames
            held = f"frames before it are kept: {kept}" if report.started else f"the store keeps its {kept} frames"
            print(f"error: {stream_id}: {stream.error} ({held})", file=sys.stderr)
    return 2 if report.errors else 0


def _live_summary(stream_id: str, accounting: dict) -> str:
    counts = "  ".join(f"{name} {count}" for name, count in accounting["frame_counts"].items() if count) or "no frame"
    latency = accounting["latency_ms"]
    shown = "  ".join(f"{key} {value:.0f}" for key, value in latency.items()) if latency else "none scored"
    return f"{stream_id}: {counts}; latency ms {shown}; gaps {len(accounting['gaps'])}"


def _cmd_export(args: argparse.Namespace) -> int:
    from .backends.choice import check_quantization_data
    from .backends.export import export_checkpoint

    check_quantization_data(args.quantization_data)
    metadata = export_checkpoint(args.checkpoint, args.format, args.out, args.calibration, args.precision,
                                 args.quantization_data)
    worst = max((metadata.get("parity_with_torch") or {}).values(), default=None)
    parity = f"; largest difference to torch {worst:.1g} of an output's range" if worst is not None else ""
    if "rank_agreement_with_torch" in metadata:
        measured = dict(metadata["rank_agreement_with_torch"])
        map_correlation = measured.pop("map_correlation", None)
        least = min(measured.values())
        parity = (f"; int8, {metadata['quantization']['quantized_convolutions']} convolutions quantized, least rank "
                  f"agreement with torch fp32 {least:.3f} on normal windows"
                  + (f", map correlation {map_correlation:.3f}" if map_correlation is not None else ""))
    print(f"exported {metadata['model']} ({args.format}): {', '.join(metadata['files'])} and anomstream.json in "
          f"{args.out}{parity}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """``calibrate``: fit a calibration on normal footage; a file, or stored into the checkpoint."""
    from .calibration.fit import CalibrationOptions, calibrate_checkpoint
    from .calibration.stored import save_calibration
    from .checkpoint import read_checkpoint, write_payload

    options = CalibrationOptions(args.smoothing, args.false_alarm_rate, position_scale=args.position_scale)
    calibration = calibrate_checkpoint(args.checkpoint, args.data, options, threads=args.threads, progress=not args.quiet,
                                       device=_device(args))
    if args.into:
        payload = read_checkpoint(args.checkpoint)
        write_payload(Path(args.into), {**payload, "calibration": calibration.to_payload()})
        where = f"checkpoint {args.into}"
    else:
        out = Path(args.out or Path(args.checkpoint).with_suffix(".calibration.pt"))
        save_calibration(calibration, out)
        where = str(out)
    scaled = "  position scale: on" if args.position_scale else ""
    print(f"calibration: {where}  normal frames: {calibration.frames}  smoothing: {calibration.smoothing}{scaled}  "
          f"threshold: {calibration.threshold:.2f} (false-alarm rate {calibration.false_alarm_rate:g} per frame)")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    """``fit``: a calibrated model for one camera or scene, trained on most of its footage."""
    from .calibration.scores import Calibration
    from .checkpoint import read_checkpoint
    from .training.fit import FitOptions, fit

    started = time.time()
    if _device(args):
        from .checkpoint import choose_device

        choose_device(_device(args), "--device")
    options = FitOptions(args.minutes, args.holdout, args.config, args.init, args.false_alarm_rate, args.threads,
                         device=_device(args), progress=not args.quiet)
    out = fit(list(args.sources), args.out, options)
    calibration = Calibration.from_payload(read_checkpoint(out)["calibration"])
    print(f"model: {out} (calibrated on {calibration.frames} held-out frames: threshold {calibration.threshold:.2f}, "
          f"{calibration.false_alarm_rate:g} false alarms per normal frame); took {(time.time() - started) / 60:.1f} min")
    print(f"next: anomstream live rtsp://CAMERA --checkpoint {out} --out live.zarr --view 8080   "
          f"(or: anomstream score FOOTAGE --checkpoint {out} --out scored.zarr)")
    return 0


def _cmd_eval_stills(args: argparse.Namespace) -> int:
    from .evaluation.stills import evaluate_stills

    evaluation = evaluate_stills(args.store, args.labels)
    print(f"{evaluation.images} images ({evaluation.normal_images} normal)")
    if evaluation.anomalous_without_mask:
        print(f"warning: {len(evaluation.anomalous_without_mask)} image(s) of a defect class have an empty mask "
              f"(anomalous in image metrics, all pixels normal): {_listing(evaluation.anomalous_without_mask)}",
              file=sys.stderr)
    rows = {"pooled": evaluation.pooled, **evaluation.per_class}
    for name, metrics in rows.items():
        shown = "  ".join(f"{key} {value:.4f}" for key, value in metrics.items() if key != "images")
        print(f"{name:14s} {shown}")
    if args.json:
        _write_json(args.json, evaluation.to_dict())
        print(f"json: {args.json}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .datasets.video_labels import load_frame_labels

    if args.dataset in STILL_DATASETS:
        return _cmd_eval_stills(args)
    if not args.labels:
        raise AnomstreamError(f"--labels is required for dataset {args.dataset}")
    from .evaluation.events import event_figures
    from .evaluation.video import (
        Evaluation,
        evaluate,
        store_pixel_auc,
        unscored_streams,
    )

    labels = load_frame_labels(args.dataset, args.labels)
    unscored = unscored_streams(args.store)
    for stream_id in unscored:
        print(f"warning: stream {stream_id}: no scored frame, left out of the metrics", file=sys.stderr)
    try:
        evaluation = evaluate(args.store, labels, args.normalisation, args.smoothing, args.combine,
                              robust=args.robust_smoothing)
    except UndefinedMetricError as error:
        if not args.pixel:
            raise
        print(f"frame AUC: undefined ({error})")  # e.g. a test video anomalous throughout: pixels still count
        evaluation = Evaluation({}, unscored_streams=unscored)
    if args.pixel:
        pixel = store_pixel_auc(args.store, _mask_reader(args.dataset, args.labels), labels)
        evaluation.pixel_auc, evaluation.anomalous_without_mask = pixel.auc, pixel.anomalous_without_mask
        for stream_id, frames in pixel.anomalous_without_mask.items():
            print(f"warning: stream {stream_id}: {len(frames)} anomalous frame(s) (label 1) have an empty pixel mask "
                  f"(all their pixels count as normal): frame_index {_listing(frames)}", file=sys.stderr)
    for method, result in evaluation.results.items():
        print(f"{method:8s} micro AUC {result.micro:.4f}  macro AUC {result.macro:.4f}  ({result.frames} frames)  "
              f"{evaluation.protocol(method)}")
    if evaluation.pixel_auc is not None:
        print(f"pixel AUROC {evaluation.pixel_auc:.4f}")
    figures = event_figures(args.store, labels)
    if figures is not None:
        rate = f"{figures.false_per_minute:.2f} per minute of normal footage" if figures.normal_minutes else "no normal footage"
        recall = f"{figures.recall:.2f}" if figures.segments else "none labelled"
        print(f"events   recall {figures.detected}/{figures.segments} labelled anomalous segments ({recall})  "
              f"false events {figures.false_events} of {figures.events} ({rate})")
    if args.json:
        _write_json(args.json, {**evaluation.to_dict(), **({"events": figures.to_dict()} if figures else {})})
        print(f"json: {args.json}")
    return 0


def _write_json(path: str, data: dict) -> None:
    """Write ``--json`` output, making its folder; an unwritable path is a one-line error."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))
    except OSError as error:
        raise AnomstreamError(f"--json {path}: cannot write ({error.strerror})") from None


def _mask_reader(dataset: str, labels_path: str):
    """stream id -> its bool (H, W) pixel masks in frame order, from the dataset's layout."""
    from .datasets.video_labels import MASK_READERS

    if dataset not in MASK_READERS:
        raise AnomstreamError(f"--pixel: no pixel masks for dataset {dataset!r}")
    return lambda stream_id: MASK_READERS[dataset](labels_path, stream_id)


def _listing(items: list, limit: int = 10) -> str:
    """The first ``limit`` items, comma-separated, and how many there are in all beyond that."""
    shown = ", ".join(str(item) for item in items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items)} in all; --json lists every one)"


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    outputs = run_demo(Path(args.out), args.replicas, progress=not args.quiet)
    for name, path in outputs.items():
        print(f"{name}: {path}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .backends.choice import check_quantization_data
    from .bench import BenchOptions, check_backend_specs, run_bench

    backends = check_backend_specs(args.backends)
    check_quantization_data(args.quantization_data)
    if not args.rounds and not args.accuracy:
        raise AnomstreamError("--rounds 0: nothing to measure without --accuracy DATASET:ROOT")
    if args.save_verdict and not args.accuracy:
        raise AnomstreamError("--save-verdict: measure the verdict with --accuracy DATASET:ROOT")
    if args.accuracy:
        from .evaluation.backends import parse_accuracy

        parse_accuracy(args.accuracy)  # before the speed rounds
    options = BenchOptions(args.batch_size, args.repeats, args.rounds, tuple(backends), _device(args),
                           tuple(args.quantization_data or ()), args.out)
    results = run_bench(args.source, args.checkpoint, options) if args.rounds else {}
    if args.accuracy:
        from .bench import run_accuracy

        results.update(run_accuracy(args.checkpoint, args.accuracy, options, args.save_verdict))
    if args.json:
        _write_json(args.json, results)
        print(f"json: {args.json}")
    return 0


def _at_least(low: float, kind: type = int):
    """argparse type: a number >= ``low`` (a bad value is argparse's one-line error naming the option)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value
    return parse


SOURCE_HELP = ("video file (any container FFmpeg reads, judged by content), frame folder, folder of clips or images, "
               "camera device (camera:N or /dev/videoN; a bare N only where no file or folder N exists), stream URL "
               "(rtsp, rtmp, http(s), udp, srt), or a labelled still dataset (mtd:ROOT, mvtec:CATEGORY, "
               "mvtec_loco:CATEGORY, ksdd2:ROOT); an existing path always means that path")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomstream", description="Streaming anomaly detection in video and images.")
    commands = parser.add_subparsers(dest="command", required=True)
    quiet, scoring, connection, device = _quiet_parent(), _scoring_parent(), _connection_parent(), _device_parent()
    _add_demo(commands, [quiet])
    _add_train(commands, [quiet, device])
    _add_score(commands, [scoring, quiet, connection, device])
    _add_live(commands, [scoring, quiet, connection, device])
    _add_calibrate(commands, [quiet, device])
    _add_fit(commands, [quiet, device])
    _add_export(commands)
    _add_eval(commands)
    _add_bench(commands, [device])
    return parser


def _device_parent() -> argparse.ArgumentParser:
    """``--device``: train, calibrate, score, live and bench: where the model runs (docs/gpu.md)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("device")
    group.add_argument("--device", metavar="DEVICE", default=argparse.SUPPRESS,  # not given: no attribute, see _device
                       help="where the model runs: auto (default: CUDA when torch sees a GPU; score and live: a GPU "
                            "fraction per replica when the Ray cluster has GPUs), cpu (score and live: replicas ask "
                            "Ray for no GPU), cuda, or cuda:N (train, calibrate, bench); overrides train.device / "
                            "score.device of a config; docs/gpu.md")
    return parent


def _device(args: argparse.Namespace) -> str | None:
    """``--device`` as given, None when it was not (the config's ``device``, else auto)."""
    return getattr(args, "device", None)


def _quiet_parent() -> argparse.ArgumentParser:
    """``--quiet``: demo, train, score, live and calibrate."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--quiet", action="store_true",
                        help="no progress bars, and under score / live no live table nor event and camera lines "
                             "(warnings, errors and the summary are still printed)")
    return parent


def _connection_parent() -> argparse.ArgumentParser:
    """``--connect-timeout``: score and live, each with its own default (``_connect_timeout``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--connect-timeout", type=_at_least(0, float), metavar="SECONDS",
                        help="keep trying a camera's first connection this long (0: one try; default: "
                             f"{SCORE_CONNECT_TIMEOUT_S:g} under score, as --reconnect-attempts says under live)")
    return parent


def _scoring_parent() -> argparse.ArgumentParser:
    """What score and live share: model, replicas, store, calibration and events."""
    parent = argparse.ArgumentParser(add_help=False)
    _add_run_options(parent)
    _add_event_options(parent)
    return parent


def _add_demo(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser("demo", parents=parents, help="score the bundled Ped2 clip with the shipped checkpoint")
    demo.add_argument("--out", default="anomstream_demo", help="output folder (default: ./anomstream_demo)")
    demo.add_argument("--replicas", type=_at_least(1), default=2, help="model replicas (default 2)")
    demo.set_defaults(run=_cmd_demo)


def _add_train(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    train = commands.add_parser("train", parents=parents, help="train a model from a YAML config")
    train.add_argument("config", help="YAML config (e.g. configs/ped2_dmad_cpu.yaml)")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt")
    train.add_argument("--data", help="override train.data (frame folders or videos of normal data)")
    train.add_argument("--epochs", type=int, help="override train.epochs")
    train.add_argument("--output-dir", help="override train.output_dir")
    train.add_argument("--stage1", help="DSR: the stage-1 (discrete VQ-VAE) checkpoint to build on")
    train.set_defaults(run=_cmd_train)


def _add_run_options(sub: argparse.ArgumentParser) -> None:
    """Model, replicas, backend, cluster and store options of score and live."""
    sub.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT), help="model checkpoint (default: shipped Ped2 DMAD)")
    sub.add_argument("--config", help="YAML config whose 'score' section sets batch size, replicas, ... (a file "
                                      "with only that section will do)")
    sub.add_argument("--out", required=True, help="zarr store to write: a path (STORE.zarr) or an object-store URL "
                                                  "(s3://BUCKET/STORE.zarr, gs://, az://; credentials from the environment)")
    sub.add_argument("--replicas", type=int, help="model replicas (default from config, else 2)")
    sub.add_argument("--batch-size", type=int, help="frames per replica call (default 16)")
    sub.add_argument("--writers", type=int, help="writer processes on this node, each writing whole streams (default "
                                                 "1; more for many streams on many replicas: docs/cluster.md)")
    sub.add_argument("--backend", help="what replicas score with: auto (default: the fastest installed one whose "
                                       "outputs match torch's, else torch), torch, onnxruntime, openvino (the "
                                       "model's exported graph, CPU); docs/backends.md")
    sub.add_argument("--precision", help="auto (default: int8-bf16, int8 or bf16 where the checkpoint's measured AUC "
                                         "holds in it and the CPU has the units, else fp32), fp32, bf16 (OpenVINO where "
                                         "the CPU has bf16 units; torch autocast), int8 (OpenVINO, quantized by NNCF), "
                                         "int8-bf16 (the same, its float parts in bf16: CPUs with bf16 units); docs/backends.md")
    sub.add_argument("--quantization-data", nargs="+", metavar="SOURCE",
                     help="normal footage int8 quantization collects its statistics on (default: the footage the "
                          "checkpoint's calibration was fitted on)")
    sub.add_argument("--address", help="join this Ray cluster: auto (the local one, or RAY_ADDRESS) or HOST:PORT of "
                                        "its head (default: start a local Ray of this run's own, whatever "
                                        "RAY_ADDRESS says)")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing store")
    sub.add_argument("--resume", action="store_true", help="continue an existing store, skipping written frames")
    sub.add_argument("--max-frames", type=_at_least(1), help="stop each live stream after this many frames")


def _add_event_options(sub: argparse.ArgumentParser) -> None:
    """Calibration, event detection, the webhook and MQTT, of score and live."""
    sub.add_argument("--calibration", metavar="FILE",
                     help="calibration file (anomstream calibrate); default: the checkpoint's own, if it has one. "
                          "The stored score is then calibrated: -log10 of its rate on normal footage")
    sub.add_argument("--event-threshold", type=float, metavar="SCORE",
                     help="an event starts when the score exceeds this (default: the calibration's threshold; "
                          "no calibration and no threshold: no events)")
    sub.add_argument("--event-low", type=float, metavar="SCORE",
                     help="an event goes on while the score stays at or above this (default: threshold - 1 with a "
                          "calibration, at least half the threshold; else the threshold)")
    sub.add_argument("--event-end-after", type=_at_least(1), default=10, metavar="FRAMES",
                     help="an event ends after this many frames below the low threshold (default 10)")
    sub.add_argument("--event-min-frames", type=_at_least(1), default=3, metavar="FRAMES",
                     help="shorter events are dropped (default 3)")
    sub.add_argument("--event-merge-gap", type=_at_least(0), default=25, metavar="FRAMES",
                     help="an event starting this soon after another's end extends it (default 25)")
    sub.add_argument("--webhook", metavar="URL",
                     help="POST each event start and end as JSON here (retries with backoff; undelivered messages "
                          "wait in OUT.events/outbox/ for the next run); receivers deduplicate by message_id. "
                          "https://user:token@host/path sends Basic auth (never printed); @FILE reads the URL from "
                          "FILE, out of sight of ps")
    sub.add_argument("--mqtt", metavar="URL",
                     help="publish to this MQTT broker (QoS 1, kept in OUT.events/outbox_mqtt/ until acknowledged): "
                          "PREFIX/available, PREFIX/CAMERA/state (retained), PREFIX/CAMERA/events, "
                          "PREFIX/CAMERA/snapshot; mqtt://[user:password@]host[:port][/PREFIX] (PREFIX default "
                          "anomstream), mqtts:// for TLS, @FILE reads the URL from FILE")


def _add_score(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    score = commands.add_parser("score", parents=parents,
                                help="score videos, frame folders, image folders or cameras into a zarr store")
    score.add_argument("sources", nargs="*", help=SOURCE_HELP)
    score.add_argument("--manifest", metavar="FILE",
                       help="more inputs, one source spec per line (# comments), or a CSV table with a 'source' column and "
                            "an optional 'stream_id' column; relative paths are relative to the manifest's folder")
    score.set_defaults(run=_cmd_score)


def _add_live(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    live = commands.add_parser("live", parents=parents,
                               help="score live cameras or streams (camera:N, rtsp://, http(s)://, ...); "
                                    "recordings are played in real time")
    live.add_argument("sources", nargs="*", metavar="source", help=SOURCE_HELP)
    live.add_argument("--cameras", metavar="FILE",
                      help="a YAML file of cameras (name, url, username, password_env or password_file, transport, "
                           "decoder_threads, threshold, policy, keep_maps, enabled): see docs/live.md, Cameras file; "
                           "with or without sources on the command line")
    live.add_argument("--policy", choices=["every", "latest"],
                      help="every: score every frame delivered (backpressure); latest: bounded latency, whole windows "
                           "dropped when the replicas fall behind (default: latest for cameras, every for recordings)")
    live.add_argument("--duration", type=_at_least(0.1, float), metavar="SECONDS", help="stop cleanly after this long")
    live.add_argument("--max-latency-ms", type=_at_least(1, float), metavar="MS",
                      help="policy latest: frames older than this when a replica is free are dropped (counted)")
    live.add_argument("--reconnect-attempts", type=_at_least(0), metavar="N",
                      help="give a stream up after N failed (re)connection attempts in a row (default: never)")
    live.add_argument("--stall-timeout", type=_at_least(0.1, float), default=10.0, metavar="SECONDS",
                      help="no frame for this long: the camera is stalled, reconnected and a gap recorded (default "
                           "10; an RTSP read gives up after half of it)")
    live.add_argument("--auth-retries", type=_at_least(0), default=2, metavar="N",
                      help="a camera refusing its credentials is tried N more times, then given up (default 2)")
    live.add_argument("--auth-backoff", type=_at_least(0, float), default=60.0, metavar="SECONDS",
                      help="wait between tries of a camera that refused its credentials (default 60: cameras lock "
                           "accounts after a few wrong logins)")
    live.add_argument("--decoder-threads", type=_at_least(1), default=1, metavar="N",
                      help="an RTSP camera's decoder threads (default 1; slice threads: no added delay, they help "
                           "only streams encoded in slices)")
    live.add_argument("--scale-in-decoder", action="store_true",
                      help="RTSP: decode straight to the model's input size (1080p: ~40%% less decoder CPU); FFmpeg's "
                           "scaling is not the calibration's, raw scores move by ~2%% (docs/live.md)")
    live.add_argument("--frozen-after", type=_at_least(0, float), default=5.0, metavar="SECONDS",
                      help="the same image for this long is a frozen feed: a gap, not scored (default 5; 0: off)")
    live.add_argument("--keep-maps", type=_at_least(0), default=1, metavar="N",
                      help="store the anomaly map of every Nth frame only (default 1: all; 0: none); maps are most of "
                           "a store's bytes, scores and status are always kept")
    live.add_argument("--rotate", choices=["hour", "day"],
                      help="one store per hour or day of capture time (UTC): OUT-YYYYmmddTHH.zarr / OUT-YYYYmmdd.zarr")
    live.add_argument("--view", type=_at_least(1), metavar="PORT",
                      help="serve a live view (latest frame with its map, score trace, fps, latency) on this port")
    live.add_argument("--view-host", default="127.0.0.1", metavar="HOST",
                      help="address the view and --metrics listen on (default 127.0.0.1: this machine only; 0.0.0.0: "
                           "everywhere, which needs a token)")
    live.add_argument("--view-token-file", metavar="FILE",
                      help="the token every request to the view and --metrics must carry (first line; default: "
                           "$ANOMSTREAM_VIEW_TOKEN; required beyond 127.0.0.1)")
    live.add_argument("--metrics", type=_at_least(1), metavar="PORT",
                      help="serve Prometheus /metrics and /healthz on this port (the view serves them too)")
    live.set_defaults(run=_cmd_live)


def _between(low: float, high: float, inclusive: bool = True):
    """argparse type: a number from ``low`` to ``high`` (``inclusive`` False: strictly between them)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = low <= value <= high if inclusive else low < value < high
        if not inside:
            raise argparse.ArgumentTypeError(f"must be {'from' if inclusive else 'strictly between'} {low:g} "
                                             f"{'to' if inclusive else 'and'} {high:g}, got {text}")
        return value
    return parse


def _add_fit(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    fit = commands.add_parser("fit", parents=parents,
                              help="train and calibrate a model for one camera or scene from its normal footage "
                                   "(docs/own-camera.md)")
    fit.add_argument("sources", nargs="+", metavar="SOURCE",
                     help="normal footage: video files or frame folders; part of one by time: 'clip.mp4?end=70%%', "
                          "'clip.mp4?start=12.5&end=60' (seconds), '?start_frame=N&end_frame=M'")
    fit.add_argument("--out", required=True, help="the calibrated checkpoint to write (never overwritten)")
    fit.add_argument("--minutes", type=_at_least(1, float), default=10.0,
                     help="the whole job's budget on this machine: training steps are what is left after decoding "
                          "and calibration (default 10)")
    fit.add_argument("--holdout", type=_between(0.05, 0.5), default=0.2,
                     help="the last share of each clip kept out of training for the calibration (default 0.2)")
    fit.add_argument("--config", help="a YAML config of a video model (default: by the footage, grey -> "
                                      "configs/ped2_dmad_cpu.yaml, colour -> configs/avenue_dmad_cpu.yaml)")
    fit.add_argument("--init", default="shipped", metavar="shipped|none|CHECKPOINT",
                     help="start from the shipped checkpoint of the chosen config (default), from scratch, or from "
                          "this checkpoint")
    fit.add_argument("--false-alarm-rate", type=_between(0.0, 1.0, inclusive=False), default=1e-3, metavar="RATE",
                     help="the threshold passes this share of normal frames (default 0.001)")
    fit.add_argument("--threads", type=_at_least(1), help="torch threads (default: the config's)")
    fit.set_defaults(run=_cmd_fit)


def _add_calibrate(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    calibrate = commands.add_parser("calibrate", parents=parents,
                                    help="fit calibrated scores and a threshold on normal footage")
    calibrate.add_argument("checkpoint", help="model checkpoint to calibrate")
    calibrate.add_argument("--data", nargs="+", required=True, metavar="SOURCE",
                           help="normal footage only (videos, frame folders, image folders, dataset specs); "
                                "never test data with anomalies")
    calibrate.add_argument("--out", help="calibration file to write (default: CHECKPOINT.calibration.pt)")
    calibrate.add_argument("--into", metavar="CHECKPOINT",
                           help="instead, write a copy of the checkpoint with the calibration stored in it (may be "
                                "the same path)")
    calibrate.add_argument("--smoothing", type=_at_least(1), default=9, metavar="FRAMES",
                           help="trailing (causal) mean of this many frames (default 9; 1: none)")
    calibrate.add_argument("--false-alarm-rate", type=_between(0.0, 1.0, inclusive=False), default=1e-3, metavar="RATE",
                           help="the default threshold passes this share of normal frames (default 0.001)")
    calibrate.add_argument("--position-scale", action="store_true",
                           help="also divide the model's reference terms by their per-position normal spread (DMAD: "
                                "helps crowded scenes such as Avenue, hurts Ped2; docs/results.md)")
    calibrate.add_argument("--threads", type=_at_least(1), help="torch threads (default: all cores)")
    calibrate.set_defaults(run=_cmd_calibrate)


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="a checkpoint's scoring graph as ONNX or OpenVINO IR, with its metadata")
    export.add_argument("checkpoint", help="model checkpoint (any model)")
    export.add_argument("--format", required=True, help="onnx (model.onnx) or openvino (model.xml + model.bin)")
    export.add_argument("--out", required=True, help="folder to write (new, empty, or an earlier export)")
    export.add_argument("--calibration", metavar="FILE", help="calibration file (default: the checkpoint's own, if any)")
    export.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                        help="int8: quantized by NNCF on normal footage (--format openvino; default fp32)")
    export.add_argument("--quantization-data", nargs="+", metavar="SOURCE",
                        help="int8: normal footage (default: the footage the calibration was fitted on)")
    export.set_defaults(run=_cmd_export)


def _add_eval(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("eval", help="frame-level AUC (video) or image/pixel AUROC and PRO (stills) of a store")
    evaluate.add_argument("store", help="zarr store written by 'anomstream score'")
    evaluate.add_argument("--dataset", default="ped2", choices=["ped2", "avenue", "shanghaitech", *STILL_DATASETS],
                          help="label layout (default ped2); still datasets (mtd, mvtec, mvtec_loco, ksdd2): stores "
                               "scored from a dataset spec, labels and masks found from the dataset")
    evaluate.add_argument("--labels",
                          help="ped2: dataset root (frame_labels_ped2.npy, testing/); avenue: testing_label_mask/; "
                               "shanghaitech: test_frame_mask/; still datasets: the dataset folder if it moved since scoring")
    evaluate.add_argument("--normalisation", nargs="+", default=["offline", "causal", "raw"],
                          choices=["offline", "causal", "raw"],
                          help="score normalisations to report (default: all three; raw and causal use no future frames)")
    evaluate.add_argument("--smoothing", type=_at_least(0), default=0,
                          help="window of temporal smoothing (centred offline, trailing causal)")
    evaluate.add_argument("--robust-smoothing", action="store_true",
                          help="offline: DMAD's 11-frame robust window (mean of the 5 values nearest the window mean)")
    evaluate.add_argument("--combine", default="score", choices=["score", "terms"],
                          help="'score': stored frame score; 'terms': official DMAD weighted terms")
    evaluate.add_argument("--pixel", action="store_true", help="also pixel AUROC from the stored maps")
    evaluate.add_argument("--json", help="write the results as JSON here")
    evaluate.set_defaults(run=_cmd_eval)


def _add_bench(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser("bench", parents=parents, help="decode / model / naive loop / pipeline fps and their ratios")
    bench.add_argument("--source", default="../shared/data/ped2/testing/frames/04", help="clip to benchmark on")
    bench.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT), help="model checkpoint")
    bench.add_argument("--batch-size", type=_at_least(1), default=16)
    bench.add_argument("--repeats", type=_at_least(1), default=4, help="times the clip is scored per measurement (default 4)")
    bench.add_argument("--rounds", type=_at_least(0), default=3, help="interleaved rounds; figures are their medians "
                       "(default 3; 0: --accuracy alone)")
    bench.add_argument("--accuracy", metavar="DATASET:ROOT", help="also score this labelled test set with each backend "
                       "(ped2:../shared/data/ped2, avenue:ROOT; mtd:ROOT, still models: image and pixel AUROC) and print its "
                       "AUC and events against the first's")
    bench.add_argument("--save-verdict", action="store_true", help="with --accuracy: keep the reduced precisions' "
                       "verdict for this checkpoint, their AUC and speed (what --precision auto reads: a precision "
                       "measured slower than the fp32 runtime it would fall back to is not taken, so list onnxruntime "
                       "and openvino too; the first backend must be fp32)")
    bench.add_argument("--quantization-data", nargs="+", metavar="SOURCE",
                       help="the int8 backends' normal footage (default: the footage the checkpoint's calibration was "
                            "fitted on, its paths from the folder it was fitted in)")
    bench.add_argument("--out", default="bench_out", help="where the scratch stores go: a new temporary folder inside "
                       "it, removed afterwards (nothing else there is touched; default: bench_out)")
    bench.add_argument("--json", help="also write the results as JSON here")
    bench.add_argument("--backends", help="comma-separated backends measured side by side, the first as reference: "
                                          "torch, onnxruntime, openvino, openvino:bf16, openvino:int8, "
                                          "openvino:int8-bf16 (default: torch)")
    bench.set_defaults(run=_cmd_bench)


PATH_ARGUMENTS = {  # Namespace names of the path arguments -> how an error names them
    "out": "--out", "manifest": "--manifest", "config": "--config", "checkpoint": "--checkpoint",
    "calibration": "--calibration", "store": "store", "labels": "--labels", "json": "--json", "into": "--into",
    "stage1": "--stage1", "output_dir": "--output-dir",
}
SPEC_ARGUMENTS = {"data": "--data", "source": "--source"}  # sources of train, calibrate, bench
POSITIONAL_NAMES = {("train", "config"): "config", ("calibrate", "checkpoint"): "checkpoint",
                    ("export", "checkpoint"): "checkpoint"}


def expand_path_arguments(args: argparse.Namespace) -> None:
    """``~`` and ``$VARIABLES`` in every path argument, expanded once, in place, before the command
    runs (``pipeline.paths``): ``--out=~/x``, which the shell leaves as written, is the home folder's
    ``x``, and what a command prints is the path it used. URLs stay as written. Sources of score and
    live expand as manifest lines do (one that cannot stays as written and fails alone). Raises
    ConfigError naming the argument (``--out: environment variable RUNS is not set ...``)."""
    from .paths import expand_input, expand_path, expand_spec

    for name, label in PATH_ARGUMENTS.items():
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, expand_path(value, POSITIONAL_NAMES.get((args.command, name), label)))
    for name, label in SPEC_ARGUMENTS.items():
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, expand_spec(value, label))
        elif isinstance(value, list):
            setattr(args, name, [expand_spec(spec, label) for spec in value])
    if isinstance(getattr(args, "sources", None), list):
        args.sources = [expand_input(spec) for spec in args.sources]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # live: a signal asks a clean stop from here on, while Ray and the model still load (it ended the process)
    args.stop = threading.Event() if args.command == "live" else None
    try:
        with stop_on_signals(args.stop, enabled=args.stop is not None):
            expand_path_arguments(args)
            return args.run(args)
    except (AnomstreamError, ModelInputError) as error:
        cause = getattr(error, "cause", None) or error  # raised inside a Ray actor
        print(f"error: {cause}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted: what was written is kept", file=sys.stderr)
        return 130
    except Exception as error:
        if not _from_ray(error) or os.environ.get("ANOMSTREAM_DEBUG"):
            raise
        print(f"error: {cause_line(error)} (inside a Ray worker; ANOMSTREAM_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


def _from_ray(error: BaseException) -> bool:
    """Whether ``error`` came out of Ray (an actor's or task's error), without importing Ray."""
    exceptions = sys.modules.get("ray.exceptions")
    return exceptions is not None and isinstance(error, exceptions.RayError)


if __name__ == "__main__":
    sys.exit(main())
