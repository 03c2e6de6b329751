"""Read a result store into per-stream score series and evaluate them against labels."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import AnomstreamError
from pipeline.evaluation.frame_metrics import (
    PROTOCOLS,
    FrameAUC,
    combine_terms,
    frame_auc,
    normalise,
    pixel_auc,
)
from pipeline.store import open_results


@dataclass
class StreamScores:
    frame_index: np.ndarray  # valid frames only
    score: np.ndarray
    terms: dict[str, np.ndarray] = field(default_factory=dict)


def _valid(group) -> np.ndarray:
    """bool (rows,) scored rows of a stream group; none when the stream wrote no arrays."""
    return group["valid"][:] if "valid" in set(group.array_keys()) else np.zeros(0, bool)


def unscored_streams(path: str | Path) -> list[str]:
    """Streams of the store without a single scored frame (e.g. decoding failed at once, or fewer
    frames than the model's window), sorted. Metrics leave them out."""
    root = open_results(path)
    return [stream_id for stream_id in sorted(root.group_keys()) if not _valid(root[stream_id]).any()]


def read_scores(path: str | Path) -> tuple[dict[str, StreamScores], dict]:
    """Valid frames of every stream with at least one, in frame order, and the store's run
    attributes; streams without a scored frame are left out (:func:`unscored_streams` names them).
    Raises :class:`AnomstreamError` when no stream has a scored frame."""
    root = open_results(path)
    streams = {}
    for stream_id in sorted(root.group_keys()):
        group = root[stream_id]
        valid = _valid(group)
        if not valid.any():
            continue
        terms = {name[len("term_"):]: group[name][:][valid] for name in group.array_keys() if name.startswith("term_")}
        streams[stream_id] = StreamScores(group["frame_index"][:][valid], group["score"][:][valid], terms)
    if not streams:
        raise AnomstreamError(f"{path}: store holds no stream with a scored frame")
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
class PixelAUC:
    auc: float
    anomalous_without_mask: dict[str, list[int]]  # stream -> scored frame indices labelled 1, mask empty


@dataclass
class Evaluation:
    results: dict[str, FrameAUC]  # normalisation -> AUCs
    pixel_auc: float | None = None
    unscored_streams: list[str] = field(default_factory=list)  # no scored frame: not in the metrics
    anomalous_without_mask: dict[str, list[int]] | None = None  # with pixel_auc
    score_kind: str = "raw"  # the stored score: "calibrated" (on normal data) or "raw" (the model's own)

    def protocol(self, method: str) -> str:
        """What ``method``'s figure measures, in words (the stored score's kind for ``raw``)."""
        kind = "calibrated: what a live stream gets" if self.score_kind == "calibrated" else self.score_kind
        return PROTOCOLS[method] + (f" ({kind})" if method == "raw" else "")

    def to_dict(self) -> dict:
        out: dict = {name: {"micro_auc": r.micro, "macro_auc": r.macro, "frames": r.frames, "per_video": r.per_video}
                     for name, r in self.results.items()}
        for name in self.results:
            out[name]["protocol"] = self.protocol(name)
        out["score_kind"] = self.score_kind
        out["unscored_streams"] = self.unscored_streams
        if self.pixel_auc is not None:
            out["pixel_auc"] = self.pixel_auc
            out["anomalous_frames_without_mask"] = self.anomalous_without_mask or {}
        return out


def evaluate(path: str | Path, labels: dict[str, np.ndarray], normalisations: list[str], smoothing: int = 0,
             combine: str = "score", streams_only: list[str] | None = None, robust: bool = False) -> Evaluation:
    """Frame-level AUCs of the store's scored streams under each normalisation; streams without a
    scored frame are left out and named in ``unscored_streams``. Raises :class:`AnomstreamError`
    for a stream without labels or with more frames than its labels, ``UndefinedMetricError`` when
    the scored frames are all one class."""
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
    return Evaluation(results, unscored_streams=unscored_streams(path), score_kind=attrs.get("score_kind", "raw"))


def store_pixel_auc(path: str | Path, masks_for_stream: Callable[[str], Iterable[np.ndarray]],
                    frame_labels: dict[str, np.ndarray] | None = None) -> PixelAUC:
    """Pixel AUROC of the stored maps against masks resized (nearest) to the map resolution.

    ``masks_for_stream(stream_id)`` yields one bool (H, W) mask per frame of the stream; streams
    without a scored frame are skipped (their masks are not read). With ``frame_labels`` (stream ->
    0/1 per frame), scored frames labelled 1 whose mask is empty are listed: they stay in the
    metric, their pixels all normal. Raises :class:`AnomstreamError` when a stream has fewer masks
    than scored frames, ``UndefinedMetricError`` when the pooled pixels are one class.
    """
    import cv2

    root = open_results(path)
    all_maps, all_masks, without_mask = [], [], {}
    for stream_id in sorted(root.group_keys()):
        group = root[stream_id]
        valid = _valid(group)
        if not valid.any():
            continue
        maps = group["map"][:][valid]
        frames = group["frame_index"][:][valid]
        size = maps.shape[1:][::-1]
        masks, has_defect = [], []
        for mask in masks_for_stream(stream_id):
            has_defect.append(bool(mask.any()))
            masks.append(cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST))
        if frames.max() >= len(masks):
            raise AnomstreamError(f"{path}: stream {stream_id!r} has {len(masks)} pixel masks "
                                  f"but frame index {frames.max()} is scored")
        labels = (frame_labels or {}).get(stream_id)
        if labels is not None:
            empty = [int(f) for f in frames if f < len(labels) and labels[f] == 1 and not has_defect[f]]
            if empty:
                without_mask[stream_id] = empty
        all_maps.append(maps.astype(np.float32))
        all_masks.append(np.stack(masks)[frames].astype(bool))
    if not all_maps:
        raise AnomstreamError(f"{path}: store holds no stream with a scored frame")
    return PixelAUC(pixel_auc(np.concatenate(all_maps), np.concatenate(all_masks)), without_mask)
