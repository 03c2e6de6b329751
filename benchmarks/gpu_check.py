"""One prepared check for a lent GPU machine (issue 31): the shipped DMAD on the device, without Ray.

Writes one table (markdown, and JSON beside it) of:
- model-only windows/s at batch 16..256: fp32 with TF32 off and on, bf16 autocast, channels_last,
  CUDA graphs, torch.compile;
- the scorer's path (WindowBatch -> the store's arrays) frames/s against model-only at the same batch;
- the Ray-free loop (K decode processes -> Scorer -> a zarr store) frames/s for K = 1..16;
- batch-1 latency p50 / p99 (ms); GPU memory of one replica; 1 / 2 / 4 replica processes on one device;
- parity with CPU fp32 of the device's fp32 and bf16 scores (largest error over the largest |score|
  and |map|) and the frame AUC of the demo clip (Ped2 test 02) with each.

On the lent machine (one H200; no ray/av there, zarr + numcodecs + pydantic travel as wheels):
    python benchmarks/gpu_check.py --device cuda --out gpu_check.md      # < 8 min
On a CPU, in the test that keeps it from rotting (CUDA-only rows say so):
    python benchmarks/gpu_check.py --device cpu --quick --out check.md
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anomstream.pipeline.assets import SAMPLE_CLIP, SHIPPED_CHECKPOINT  # noqa: E402
from anomstream.pipeline.calibration.stored import run_calibration  # noqa: E402
from anomstream.pipeline.checkpoint import read_checkpoint_and_hash  # noqa: E402
from anomstream.pipeline.demo import sample_labels  # noqa: E402
from anomstream.pipeline.errors import UndefinedMetricError  # noqa: E402
from anomstream.pipeline.evaluation.frame_metrics import frame_auc, minmax  # noqa: E402
from anomstream.pipeline.sources.base import Frame  # noqa: E402
from anomstream.pipeline.store import ResultStore  # noqa: E402
from anomstream.pipeline.stream.preprocess import prepare_frame  # noqa: E402
from anomstream.pipeline.stream.scorer import Scorer  # noqa: E402
from anomstream.pipeline.stream.windows import WindowBatch, window_batches  # noqa: E402

CUDA_ONLY = "n/a (CUDA only)"


def clip_frames(limit: int | None = None) -> list[Frame]:
    """The demo clip's frames, decoded with OpenCV (PyAV may be missing on the device machine), RGB."""
    capture, frames = cv2.VideoCapture(str(SAMPLE_CLIP)), []
    while limit is None or len(frames) < limit:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(Frame("clip", len(frames), len(frames) / 10.0, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)))
    capture.release()
    return frames


def scorer(device: str, precision: str = "fp32", threads: int | None = None) -> Scorer:
    """A torch Scorer of the shipped checkpoint with its calibration's reference maps, on ``device``."""
    from anomstream.pipeline.backends.choice import BackendChoice

    payload, sha256 = read_checkpoint_and_hash(SHIPPED_CHECKPOINT)
    calibrated = run_calibration(payload, sha256, None)
    return Scorer(payload, threads, device=device, reference=calibrated.reference if calibrated else None,
                  backend=BackendChoice("torch", precision))


def windows_of(frames: list[Frame], model, count: int) -> torch.Tensor:
    """``count`` uint8 windows (count, T, C, H, W) of consecutive prepared frames (repeated as needed)."""
    prepared = np.stack([prepare_frame(f.image, model.image_size, model.channels) for f in frames])
    t = model.window_length
    starts = [i % (len(prepared) - t + 1) for i in range(count)]
    return torch.from_numpy(np.stack([prepared[s:s + t] for s in starts]))


def rate(call: Callable[[], object], items: int, seconds: float, device: torch.device, least: int = 3) -> float:
    """Items per second of ``call`` (two warm-up calls, none with ``least`` 1: --quick checks the code
    path, not a speed; then at least ``least`` timed ones or ``seconds``)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2 if least > 1 else 0):
        call()
    sync()
    started, done = time.perf_counter(), 0
    while done < least or time.perf_counter() - started < seconds:
        call()
        done += 1
    sync()
    return done * items / (time.perf_counter() - started)


def model_only(core: Scorer, windows: torch.Tensor, batches: list[int], seconds: float, compile_too: bool,
               least: int = 3) -> list:
    """Rows (variant, batch, windows/s) of ``model.score`` on windows already on the device (``least``
    timed calls at least: :func:`rate`)."""
    device, model, rows = core.device, core.model, []
    cuda = device.type == "cuda"
    for batch in batches:
        x = windows[:batch].to(device)
        variants = {"fp32 (TF32 off)": ("fp32", False, False), "fp32 (TF32 on)": ("fp32", True, False),
                    "bf16 autocast": ("bf16", False, False), "channels_last fp32": ("fp32", False, True)}
        for name, (precision, tf32, channels_last) in variants.items():
            if tf32 and not cuda:
                rows.append(("model only", name, batch, CUDA_ONLY))
                continue
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

            def call(precision=precision, x=x):
                with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
                    return model.score(x)

            rows.append(("model only", name, batch, rate(call, batch, seconds, device, least)))
        model.to(memory_format=torch.contiguous_format)
        rows.append(("model only", "CUDA graph fp32", batch, _graphed(model, x, seconds) if cuda else CUDA_ONLY))
    if compile_too:
        batch = batches[len(batches) // 2]
        rows.append(("model only", "torch.compile fp32", batch, _compiled(model, windows[:batch].to(device), seconds)))
    return rows


def _graphed(model, x: torch.Tensor, seconds: float) -> float | str:
    try:
        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    model.score(x)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                model.score(x)
        return rate(graph.replay, len(x), seconds, x.device)
    except Exception as error:  # noqa: BLE001 - a capture the model does not allow: say why
        return f"failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}"


def _compiled(model, x: torch.Tensor, seconds: float) -> float | str:
    try:
        compiled = torch.compile(model.score)
        with torch.inference_mode():
            return rate(lambda: compiled(x), len(x), seconds, x.device)
    except Exception as error:  # noqa: BLE001
        return f"failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}"


def scorer_path(core: Scorer, frames: list[Frame], batches: list[int], seconds: float, model_rows: list) -> list:
    """Rows: the scorer's frames/s on real WindowBatches, and its share of model-only at that batch."""
    model, rows = core.model, []
    for batch in batches:
        items = [b for b in window_batches(iter(frames), "clip", model.window_length, batch, model.image_size,
                                           model.channels) if isinstance(b, WindowBatch) and b.valid.all()]
        if not items:
            continue
        first = items[0]
        fps = rate(lambda first=first: core.score(first), first.size, seconds, core.device)
        base = next((r[3] for r in model_rows if r[1] == "fp32 (TF32 off)" and r[2] == batch), None)
        rows.append(("scorer path", "frames/s", batch, fps))
        if isinstance(base, float):
            rows.append(("scorer path", "share of model-only", batch, fps / base))
    return rows


def _decode_worker(limit: int | None, batch: int, shape: tuple[int, int, int], queue: mp.Queue) -> None:
    t, size, channels = shape
    for item in window_batches(iter(clip_frames(limit)), "clip", t, batch, size, channels):
        if isinstance(item, WindowBatch):
            queue.put(item)
    queue.put(None)


def ray_free_loop(core: Scorer, processes: list[int], batch: int, limit: int | None) -> list:
    """Rows: frames/s of K processes decoding the clip -> this process's Scorer -> one zarr stream."""
    model, rows = core.model, []
    shape = (model.window_length, model.image_size, model.channels)
    context = mp.get_context("spawn")
    for count in processes:
        with tempfile.TemporaryDirectory() as folder:
            store = ResultStore(Path(folder) / "s.zarr", {"model": model.name})
            store.open_stream("loop", core.arrays, batch, None, {"source": "clip"})
            queue = context.Queue(maxsize=4 * count)
            workers = [context.Process(target=_decode_worker, args=(limit, batch, shape, queue)) for _ in range(count)]
            for worker in workers:
                worker.start()
            started, ended, row = time.perf_counter(), 0, 0
            while ended < count:
                item = queue.get()
                if item is None:
                    ended += 1
                    continue
                store.write("loop", row, core.score(item))
                row += item.size
            store.close_stream("loop")
            rows.append(("ray-free loop", f"{count} decode process(es)", batch, row / (time.perf_counter() - started)))
            for worker in workers:
                worker.join()
    return rows


def latency(core: Scorer, frames: list[Frame], calls: int) -> list:
    """Rows: batch-1 latency of the scorer's path, p50 and p99 (ms)."""
    model = core.model
    items = [b for b in window_batches(iter(frames), "clip", model.window_length, 1, model.image_size, model.channels)
             if isinstance(b, WindowBatch) and b.valid.all()]
    times = []
    for index in range(calls + 3):
        started = time.perf_counter()
        core.score(items[index % len(items)])
        if core.device.type == "cuda":
            torch.cuda.synchronize(core.device)
        times.append((time.perf_counter() - started) * 1000)
    times = times[3:]
    return [("latency, batch 1", "p50 ms", 1, float(np.percentile(times, 50))),
            ("latency, batch 1", "p99 ms", 1, float(np.percentile(times, 99)))]


def memory(core: Scorer, windows: torch.Tensor, batch: int) -> list:
    """Rows: GPU memory one replica holds after scoring a batch (MiB), allocated and reserved."""
    if core.device.type != "cuda":
        return [("memory per replica", "peak allocated MiB", batch, CUDA_ONLY)]
    torch.cuda.reset_peak_memory_stats(core.device)
    with torch.inference_mode():
        core.model.score(windows[:batch].to(core.device))
    torch.cuda.synchronize(core.device)
    return [("memory per replica", "peak allocated MiB", batch, torch.cuda.max_memory_allocated(core.device) / 2**20),
            ("memory per replica", "reserved MiB", batch, torch.cuda.memory_reserved(core.device) / 2**20)]


def _replica_process(device: str, batch: int, seconds: float, threads: int | None, results: mp.Queue) -> None:
    core = scorer(device, threads=threads)
    x = windows_of(clip_frames(40), core.model, batch).to(core.device)
    with torch.inference_mode():
        results.put(rate(lambda: core.model.score(x), batch, seconds, core.device))


def replicas_per_device(device: str, counts: list[int], batch: int, seconds: float) -> list:
    """Rows: total windows/s of 1 / 2 / 4 replica processes scoring at once on one device."""
    context, rows = mp.get_context("spawn"), []
    threads = 1 if device == "cpu" else None
    for count in counts:
        results = context.Queue()
        workers = [context.Process(target=_replica_process, args=(device, batch, seconds, threads, results))
                   for _ in range(count)]
        for worker in workers:
            worker.start()
        total = sum(results.get() for _ in workers)
        for worker in workers:
            worker.join()
        rows.append(("replicas on one device", f"{count} process(es), total windows/s", batch, total))
    return rows


def parity(device: str, frames: list[Frame], batch: int) -> list:
    """Rows: the device's fp32 / bf16 scores against CPU fp32 on the whole clip (largest error over
    the largest value, score and map) and each one's frame AUC on the clip's labels."""
    runs = {"cpu fp32": scorer("cpu")}
    if device != "cpu":
        runs[f"{device} fp32"] = scorer(device)
    runs[f"{device} bf16"] = scorer(device, "bf16")
    labels, outputs, rows = sample_labels(), {}, []
    for name, core in runs.items():
        model = core.model
        items = window_batches(iter(frames), "clip", model.window_length, batch, model.image_size, model.channels)
        results = [core.score(item) for item in items if isinstance(item, WindowBatch)]
        outputs[name] = {key: np.concatenate([r[key] for r in results]) for key in ("score_raw", "map", "valid",
                                                                                   "frame_index")}
    reference = outputs["cpu fp32"]
    for name, output in outputs.items():
        valid = output["valid"]
        score = output["score_raw"][valid]
        try:
            auc: float | str = frame_auc({"clip": minmax(score)}, {"clip": labels[output["frame_index"][valid]]}).micro
        except UndefinedMetricError:
            auc = "n/a (the frames used are all of one class: --quick)"
        rows.append(("parity with CPU fp32", f"{name}: frame AUC", batch, auc))
        if name != "cpu fp32":
            for key in ("score_raw", "map"):
                want = reference[key][valid].astype(np.float64)
                got = output[key][valid].astype(np.float64)
                rows.append(("parity with CPU fp32", f"{name}: max error / max |{key}|", batch,
                             float(np.nanmax(np.abs(got - want)) / max(np.nanmax(np.abs(want)), 1e-12))))
    return rows


def write_table(rows: list, out: Path, header: dict) -> None:
    """``out`` (markdown) and ``out`` with .json: the machine, then a row per measurement."""
    lines = [f"# gpu_check {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             *(f"- {key}: {value}" for key, value in header.items()), "",
             "| section | setting | batch | value |", "| --- | --- | --- | --- |"]
    for section, setting, batch, value in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"| {section} | {setting} | {batch} | {shown} |")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": header, "rows": rows}, indent=1))


def machine(device: torch.device) -> dict:
    flags = [flag for flag in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
             if flag in Path("/proc/cpuinfo").read_text()] if Path("/proc/cpuinfo").exists() else []
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    return {"device": str(device), "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu flags": " ".join(flags) or "none of the listed", "cpu cores": mp.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--out", default="gpu_check.md", help="the table (markdown; .json beside it)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the CPU test that keeps the script alive")
    parser.add_argument("--seconds", type=float, default=None, help="per measurement (default 2; --quick 0.2)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compile takes ~1 min)")
    args = parser.parse_args(argv)
    quick = args.quick
    seconds = args.seconds if args.seconds is not None else 0.2 if quick else 2.0
    frames = clip_frames(24 if quick else None)
    core = scorer(args.device, threads=2 if args.device == "cpu" else None)
    windows = windows_of(frames, core.model, 4 if quick else 256)
    batches = [1, 2] if quick else [16, 32, 64, 128, 256]
    # --quick: one call each, no warm-up (bf16 autocast on a CPU without bf16 units: ~0.2 windows/s, emulated)
    rows = model_only(core, windows, batches, seconds, compile_too=not (quick or args.no_compile), least=1 if quick else 3)
    rows += scorer_path(core, frames, batches, seconds, rows)
    rows += ray_free_loop(core, [2] if quick else [1, 2, 4, 8, 16], 4 if quick else 64, 24 if quick else None)
    rows += latency(core, frames, 5 if quick else 200)
    rows += memory(core, windows, batches[-1] if quick else 64)
    rows += replicas_per_device(args.device, [2] if quick else [1, 2, 4], batches[-1] if quick else 64, seconds)
    rows += parity(args.device, frames[:core.model.window_length + 1] if quick else frames, batches[-1] if quick else 64)
    write_table(rows, Path(args.out), machine(core.device))
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
