"""``anomstream demo``: the bundled Ped2 clip through the Ray pipeline with the shipped checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .assets import SAMPLE_CLIP, SAMPLE_LABELS, SHIPPED_CHECKPOINT
from .config import ScoreSection
from .driver.plan import RunPlan
from .driver.run import score_sources
from .errors import AnomstreamError
from .evaluation.frame_metrics import frame_auc, minmax
from .sources.video import VideoFileSource
from .store import open_results, read_events
from .visualize import plot_scores, write_overlay


def sample_labels() -> np.ndarray:
    spec = json.loads(SAMPLE_LABELS.read_text())
    labels = np.zeros(spec["frames"], np.int8)
    for start, end in spec["anomalous"]:
        labels[start:end + 1] = 1
    return labels


def run_demo(out: Path, replicas: int = 2, progress: bool = True) -> dict[str, Path]:
    for asset in (SHIPPED_CHECKPOINT, SAMPLE_CLIP, SAMPLE_LABELS):
        if not asset.is_file():
            raise AnomstreamError(f"{asset}: shipped demo file is missing (reinstall anomstream)")
    out.mkdir(parents=True, exist_ok=True)
    store = out / "demo.zarr"
    report = score_sources(RunPlan(specs=[str(SAMPLE_CLIP)], checkpoint=str(SHIPPED_CHECKPOINT), out=store,
                                   settings=ScoreSection(replicas=replicas), mode="overwrite", progress=progress))
    if report.errors:
        raise AnomstreamError(report.errors[0])
    group = open_results(store)[SAMPLE_CLIP.stem]
    score, valid, frame_index = group["score"][:], group["valid"][:], group["frame_index"][:]
    labels = sample_labels()
    auc = frame_auc({"clip": minmax(score[valid])}, {"clip": labels[frame_index[valid]]}).micro
    print(f"scored {report.frames} frames in {report.seconds:.1f} s with {report.replicas} replicas "
          f"({report.frames / report.seconds:.1f} fps); frame AUC on this clip: {auc:.3f}")
    source = VideoFileSource(SAMPLE_CLIP)
    table = read_events(store, SAMPLE_CLIP.stem)
    events = list(zip(table["start_frame"].tolist(), table["end_frame"].tolist()))
    root_attrs = open_results(store).attrs
    threshold = (root_attrs.get("events") or {}).get("threshold")
    plot = plot_scores(out / "scores.png", frame_index, score, f"DMAD score, Ped2 test clip 02 (AUC {auc:.3f})", labels,
                       threshold, events, calibrated=root_attrs.get("score_kind") == "calibrated")
    print(f"events: {len(events)} ({store.with_name(store.stem + '.events')})")
    overlay = write_overlay(out / "overlay.mp4", source, group["map"][:], score, source.fps or 25.0,
                            events=events, threshold=threshold)
    return {"store": store, "plot": plot, "overlay": overlay}
