"""Pictures of a scored stream: a score-over-time PNG and an overlay video (heatmap + score trace)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .sources.base import Source


def _anomalous_spans(labels: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], labels.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def plot_scores(path: Path, frame_index: np.ndarray, score: np.ndarray, title: str,
                labels: np.ndarray | None = None, threshold: float | None = None,
                events: list[tuple[int, int]] = (), calibrated: bool = False) -> Path:
    """Score over frames; labelled anomalous frames shaded, the event threshold as a dashed line
    and the detected events as hatched spans; ``calibrated``: the axis says what the score means
    (-log10 of its rate on normal footage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=110)
    if labels is not None:
        for i, (start, end) in enumerate(_anomalous_spans(labels)):
            ax.axvspan(start - 0.5, end - 0.5, color="tab:red", alpha=0.15, label="labelled anomalous" if i == 0 else None)
    for i, (start, end) in enumerate(events):
        ax.axvspan(start - 0.5, end + 0.5, ymin=0.93, ymax=1.0, color="tab:orange", label="event" if i == 0 else None)
    ax.plot(frame_index, score, color="tab:blue", lw=1.5, label="anomaly score")
    if threshold is not None:
        rate = f" (1 frame in {10 ** threshold:,.0f} on normal footage)" if calibrated else ""
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"event threshold {threshold:g}{rate}")
    ax.set_xlabel("frame")
    ax.set_ylabel("calibrated score: -log10 rate on normal footage" if calibrated else "score", fontsize=8)
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _trace_panel(width: int, height: int, score: np.ndarray, upto: int, low: float, high: float,
                 events: list[tuple[int, int]] = (), threshold: float | None = None) -> np.ndarray:
    panel = np.full((height, width, 3), 24, np.uint8)
    scale = (width - 1) / max(len(score) - 1, 1)
    for start, end in events:
        if start <= upto:
            cv2.rectangle(panel, (int(start * scale), 0), (int(min(end, upto) * scale), height - 1), (90, 30, 30), -1)
    if threshold is not None:
        y = int(height - 4 - (threshold - low) / max(high - low, 1e-9) * (height - 8))
        cv2.line(panel, (0, y), (width - 1, y), (255, 77, 77), 1)
    known = np.flatnonzero(~np.isnan(score[: upto + 1]))
    if len(known) > 1:
        xs = (known / max(len(score) - 1, 1) * (width - 1)).astype(np.int32)
        ys = (height - 4 - (score[known] - low) / max(high - low, 1e-9) * (height - 8)).astype(np.int32)
        cv2.polylines(panel, [np.stack([xs, ys], 1)], False, (80, 200, 255), 1, cv2.LINE_AA)
    value = score[upto]
    text = f"frame {upto}  score {value:.3f}" if not np.isnan(value) else f"frame {upto}  (no score: warm-up)"
    if any(start <= upto <= end for start, end in events):
        text += "  EVENT"
    cv2.putText(panel, text, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (230, 230, 230), 1, cv2.LINE_AA)
    return panel


def overlay_map(image: np.ndarray, anomaly_map: np.ndarray, high: float) -> np.ndarray:
    """RGB uint8 (H, W, 3) with ``anomaly_map`` (h, w; any float dtype, resized to the image) as a
    JET heatmap blended in at 40 %, scaled 0..``high``; a map that is not finite leaves the image as is."""
    if not np.isfinite(anomaly_map).all():
        return image
    h, w = image.shape[:2]
    scaled = np.clip(anomaly_map.astype(np.float32) / max(high, 1e-9), 0, 1)
    heat = cv2.applyColorMap((cv2.resize(scaled, (w, h)) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(image, 0.6, cv2.cvtColor(heat, cv2.COLOR_BGR2RGB), 0.4, 0)


def picture_jpeg(image: np.ndarray, size: int) -> bytes:
    """A camera's picture, uint8 (H, W, 3) RGB or (H, W) grey, scaled down (never up, area averaging) so
    its longer side is at most ``size`` px, as JPEG bytes (quality 80): what the live view shows of a camera."""
    scale = min(1.0, size / max(image.shape[:2]))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    image = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()


def map_png(anomaly_map: np.ndarray, high: float) -> bytes:
    """An anomaly map (h, w; any float dtype) as a translucent PNG at its own size: JET colours
    scaled 0..``high``, each pixel as opaque as its value (a quarter of ``high`` and below: clear,
    ``high`` and above: 75 %), so
    that laid over the camera's picture (the browser stretches it to the picture: the model saw the
    whole frame) only what stands out is coloured. Not finite values are clear."""
    values = anomaly_map.astype(np.float32)
    scaled = np.clip(np.nan_to_num(values / max(high, 1e-9), nan=0.0, posinf=0.0, neginf=0.0), 0, 1)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)  # BGR
    alpha = (np.clip((scaled - 0.25) / 0.75, 0, 1) * 0.75 * 255).astype(np.uint8)
    return cv2.imencode(".png", np.dstack([heat, alpha]))[1].tobytes()


def overlay_jpeg(image: np.ndarray, anomaly_map: np.ndarray, high: float, size: int = 320,
                 aspect: float | None = None, caption: str | None = None) -> bytes:
    """A model-input image uint8 (C, H, W) (C = 1 grey or 3 RGB) with its map overlaid
    (:func:`overlay_map`), scaled so the longer side is ``size`` px, as JPEG bytes (quality 85).
    ``aspect``: the source frame's width / height (the model's input is square: the picture is
    drawn back in the frame's own shape); ``caption``: one line in a strip below the picture."""
    frame = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    rgb = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB) if frame.ndim == 2 else np.ascontiguousarray(frame)
    width, height = (rgb.shape[1], rgb.shape[0]) if aspect is None else (aspect, 1.0)
    scale = size / max(width, height)
    rgb = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_LINEAR)
    shown = overlay_map(rgb, anomaly_map, high)
    if caption:
        strip = np.zeros((CAPTION_PX, shown.shape[1], 3), np.uint8)
        cv2.putText(strip, caption, (6, CAPTION_PX - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        shown = np.concatenate([shown, strip])
    return cv2.imencode(".jpg", cv2.cvtColor(shown, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


CAPTION_PX = 22  # the caption strip's height under a snapshot


def write_overlay(path: Path, source: Source, maps: np.ndarray, score: np.ndarray, fps: float = 25.0,
                  trace_height: int = 48, events: list[tuple[int, int]] = (), threshold: float | None = None) -> Path:
    """H.264 mp4 (PyAV): each frame with its anomaly map as a heatmap, and the score trace below
    with the event threshold (a red line) and the events (frame spans, shaded once reached)."""
    import av

    finite = maps[np.isfinite(maps)]
    map_high = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    scored = score[np.isfinite(score)]
    low, high = (float(scored.min()), float(scored.max())) if scored.size else (0.0, 1.0)
    if threshold is not None:
        low, high = min(low, threshold), max(high, threshold * 1.1)
    container = av.open(str(path), mode="w")
    stream = None
    try:
        for frame in source.frames():
            if frame.index >= len(score):
                break
            image = frame.image
            h, w = image.shape[:2]
            if stream is None:
                stream = container.add_stream("libx264", rate=round(fps))
                stream.width, stream.height = w - w % 2, (h + trace_height) - (h + trace_height) % 2
                stream.pix_fmt = "yuv420p"
            image = overlay_map(image, maps[frame.index], map_high)
            trace = _trace_panel(w, trace_height, score, frame.index, low, high, events, threshold)
            composed = np.vstack([image, trace])
            composed = np.ascontiguousarray(composed[: stream.height, : stream.width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(composed, format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    finally:
        container.close()
    return path
