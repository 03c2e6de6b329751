"""Read a result store into per-stream score series and evaluate them against labels."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AnomstreamError
from ..store import open_results
from .frame_metrics import (
    PROTOCOLS,
    FrameAUC,
    combine_terms,
    frame_auc,
    normalise,
    pixel_auc,
)


@dataclass
class StreamScores:
    frame_index: np.ndarray  # valid frames only
    score: np.ndarray
    terms: dict[str, np.ndarray] = field(default_factory=dict)
    frames: int = 0  # rows of the stream: every frame decoded, scored or not (the first T-1 are not)
    complete: bool = True  # decoded to its end: its labels must be exactly as long


def _valid(group) -> np.ndarray:
    """bool (rows,) scored rows of a stream group; none when the stream wrote no arrays."""
    return group["valid"][:] if "valid" in set(group.array_keys()) else np.zeros(0, bool)


def _length(group) -> tuple[int, bool]:
    """(frames, complete) of a stream group: the rows written, and whether its video was decoded to
    its end (no error, not stopped by the run, not still being written)."""
    attrs = group.attrs
    frames = int(attrs["written"]) if "written" in attrs else _valid(group).shape[0]
    return frames, bool(attrs.get("complete", True)) and not attrs.get("stopped")


def length_mismatches(lengths: dict[str, tuple[int, int, bool]], unit: str = "labels") -> list[str]:
    """``'ID: N labels for M frames'`` for each stream whose ground truth does not match what was
    scored. ``lengths``: stream -> (ground-truth length, frames, complete). The rule: a complete
    stream has exactly one label per frame; a stream cut short (decode error, stopped run) was
    scored on the first frames of its video, so its labels may be longer, never shorter."""
    return [f"{stream_id}: {have} {unit} for {frames} frames" for stream_id, (have, frames, complete) in lengths.items()
            if have < frames or (complete and have != frames)]


def check_labels(path: str | Path, streams: dict[str, StreamScores], labels: dict[str, np.ndarray]) -> None:
    """Raises :class:`AnomstreamError` naming every stream of ``streams`` without labels, or else
    every one whose labels do not match its frames (:func:`length_mismatches`), in one line."""
    missing = [stream_id for stream_id in streams if stream_id not in labels]
    if missing:
        raise AnomstreamError(f"{path}: no labels for stream{'s' * (len(missing) > 1)} {', '.join(missing)}")
    wrong = length_mismatches({k: (len(labels[k]), s.frames, s.complete) for k, s in streams.items()})
    if wrong:
        raise AnomstreamError(f"labels do not match the scored frames of {path}: {'; '.join(wrong)}")


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
        frame_index = group["frame_index"][:][valid]
        frames, complete = _length(group)
        streams[stream_id] = StreamScores(frame_index, group["score"][:][valid], terms,
                                          max(frames, int(frame_index.max()) + 1), complete)
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
    combine: str = "score"  # what was evaluated: the stored score, or the model's terms combined (``terms``)

    def protocol(self, method: str) -> str:
        """What ``method``'s figure measures, in words (the stored score's kind for ``raw``; with
        ``combine`` ``terms``, the terms, not the stored score)."""
        if self.combine == "terms":
            what = "the model's score terms combined with the checkpoint's weights, not the stored score"
            return f"causal: {what}" if method == "raw" else f"{PROTOCOLS[method]}, of {what}"
        kind = "calibrated: what a live stream gets" if self.score_kind == "calibrated" else self.score_kind
        return PROTOCOLS[method] + (f" ({kind})" if method == "raw" else "")

    def to_dict(self) -> dict:
        out: dict = {name: {"micro_auc": r.micro, "macro_auc": r.macro, "frames": r.frames, "per_video": r.per_video}
                     for name, r in self.results.items()}
        for name in self.results:
            out[name]["protocol"] = self.protocol(name)
        out["score_kind"] = self.score_kind
        out["combine"] = self.combine
        out["unscored_streams"] = self.unscored_streams
        if self.pixel_auc is not None:
            out["pixel_auc"] = self.pixel_auc
            out["anomalous_frames_without_mask"] = self.anomalous_without_mask or {}
        return out


def evaluate(path: str | Path, labels: dict[str, np.ndarray], normalisations: list[str], smoothing: int = 0,
             combine: str = "score", streams_only: list[str] | None = None, robust: bool = False) -> Evaluation:
    """Frame-level AUCs of the store's scored streams under each normalisation; streams without a
    scored frame are left out and named in ``unscored_streams``. Raises :class:`AnomstreamError`
    naming every stream without labels, or whose labels do not match its frames (:func:`check_labels`),
    ``UndefinedMetricError`` when the scored frames are all one class."""
    streams, attrs = read_scores(path)
    if streams_only:
        streams = {k: v for k, v in streams.items() if k in streams_only}
    check_labels(path, streams, labels)
    raw = series(streams, combine, attrs.get("term_weights", {}))
    frame_labels = {stream_id: labels[stream_id][stream.frame_index] for stream_id, stream in streams.items()}
    results = {}
    for method in normalisations:
        scores = {k: normalise(v, method, smoothing, robust and method == "offline") for k, v in raw.items()}
        results[method] = frame_auc(scores, frame_labels)
    return Evaluation(results, unscored_streams=unscored_streams(path), score_kind=attrs.get("score_kind", "raw"),
                      combine=combine)


def store_pixel_auc(path: str | Path, masks_for_stream: Callable[[str], Iterable[np.ndarray]],
                    frame_labels: dict[str, np.ndarray] | None = None) -> PixelAUC:
    """Pixel AUROC of the stored maps against masks resized (nearest) to the map resolution.

    ``masks_for_stream(stream_id)`` yields one bool (H, W) mask per frame of the stream; streams
    without a scored frame are skipped (their masks are not read). With ``frame_labels`` (stream ->
    0/1 per frame), scored frames labelled 1 whose mask is empty are listed: they stay in the
    metric, their pixels all normal. Raises :class:`AnomstreamError` naming every stream whose masks
    do not match its frames (the rule of :func:`length_mismatches`), ``UndefinedMetricError`` when
    the pooled pixels are one class.
    """
    import cv2

    root = open_results(path, maps=True)
    all_maps, all_masks, without_mask, lengths = [], [], {}, {}
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
        count, complete = _length(group)
        lengths[stream_id] = (len(masks), max(count, int(frames.max()) + 1), complete)
        if length_mismatches({stream_id: lengths[stream_id]}):
            continue  # named below, with every other such stream
        labels = (frame_labels or {}).get(stream_id)
        if labels is not None:
            empty = [int(f) for f in frames if f < len(labels) and labels[f] == 1 and not has_defect[f]]
            if empty:
                without_mask[stream_id] = empty
        all_maps.append(maps.astype(np.float32))
        all_masks.append(np.stack(masks)[frames].astype(bool))
    wrong = length_mismatches(lengths, "masks")
    if wrong:
        raise AnomstreamError(f"pixel masks do not match the scored frames of {path}: {'; '.join(wrong)}")
    if not all_maps:
        raise AnomstreamError(f"{path}: store holds no stream with a scored frame")
    return PixelAUC(pixel_auc(np.concatenate(all_maps), np.concatenate(all_masks)), without_mask)
