"""Read a result store into per-stream score series and evaluate them against labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import AnomstreamError
from pipeline.evaluation import FrameAUC, combine_terms, frame_auc, normalise, pixel_auc
from pipeline.store import open_results


@dataclass
class StreamScores:
    frame_index: np.ndarray  # valid frames only
    score: np.ndarray
    terms: dict[str, np.ndarray] = field(default_factory=dict)


def read_scores(path: str | Path) -> tuple[dict[str, StreamScores], dict]:
    """Valid frames of every stream, in frame order, and the store's run attributes."""
    root = open_results(path)
    streams = {}
    for stream_id in sorted(root.group_keys()):
        group = root[stream_id]
        valid = group["valid"][:]
        terms = {name[len("term_"):]: group[name][:][valid] for name in group.array_keys() if name.startswith("term_")}
        streams[stream_id] = StreamScores(group["frame_index"][:][valid], group["score"][:][valid], terms)
    if not streams:
        raise AnomstreamError(f"{path}: store holds no streams")
    return streams, dict(root.attrs)


def series(streams: dict[str, StreamScores], combine: str, weights: dict[str, float]) -> dict[str, np.ndarray]:
    """Per-stream raw anomaly series: the stored score, or the weighted per-video-normalised terms."""
    if combine == "score":
        return {k: s.score for k, s in streams.items()}
    if combine == "terms":
        if not weights:
            raise AnomstreamError("store has no score terms to combine")
        return {k: combine_terms(s.terms, weights) for k, s in streams.items()}
    raise AnomstreamError(f"unknown combine {combine!r}; use 'score' or 'terms'")


@dataclass
class Evaluation:
    results: dict[str, FrameAUC]  # normalisation -> AUCs
    pixel_auc: float | None = None

    def to_dict(self) -> dict:
        out = {name: {"micro_auc": r.micro, "macro_auc": r.macro, "frames": r.frames, "per_video": r.per_video}
               for name, r in self.results.items()}
        if self.pixel_auc is not None:
            out["pixel_auc"] = self.pixel_auc
        return out


def evaluate(path: str | Path, labels: dict[str, np.ndarray], normalisations: list[str], smoothing: int = 0,
             combine: str = "score", streams_only: list[str] | None = None, robust: bool = False) -> Evaluation:
    streams, attrs = read_scores(path)
    if streams_only:
        streams = {k: v for k, v in streams.items() if k in streams_only}
    raw = series(streams, combine, attrs.get("term_weights", {}))
    frame_labels = {}
    for stream_id, stream in streams.items():
        if stream_id not in labels:
            raise AnomstreamError(f"{path}: stream {stream_id!r} has no labels")
        if stream.frame_index.size and stream.frame_index.max() >= len(labels[stream_id]):
            raise AnomstreamError(f"{path}: stream {stream_id!r} has more frames than its labels")
        frame_labels[stream_id] = labels[stream_id][stream.frame_index]
    results = {}
    for method in normalisations:
        scores = {k: normalise(v, method, smoothing, robust and method == "offline") for k, v in raw.items()}
        results[method] = frame_auc(scores, frame_labels)
    return Evaluation(results)


def store_pixel_auc(path: str | Path, masks_for_stream) -> float:
    """Pixel AUROC of the stored maps against masks resized (nearest) to the map resolution.

    ``masks_for_stream(stream_id)`` yields one bool (H, W) mask per frame of the stream.
    """
    import cv2

    root = open_results(path)
    all_maps, all_masks = [], []
    for stream_id in sorted(root.group_keys()):
        group = root[stream_id]
        valid = group["valid"][:]
        maps = group["map"][:][valid]
        size = maps.shape[1:][::-1]
        masks = [cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) for m in masks_for_stream(stream_id)]
        frames = group["frame_index"][:][valid]
        all_maps.append(maps.astype(np.float32))
        all_masks.append(np.stack(masks)[frames].astype(bool))
    return pixel_auc(np.concatenate(all_maps), np.concatenate(all_masks))
