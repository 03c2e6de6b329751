"""Prometheus metrics and a health answer of a live run, from the writers' per-stream accounting
(the same figures as the store's attrs and the live view), in Prometheus' text format through
``prometheus_client`` (a registry per scrape with one collector: nothing global, nothing kept).

Metrics (labels ``stream`` and as named):

- ``anomstream_frames_total{status}``: rows written by frame status (``scored``, ``dropped_behind``,
  ``source_gap``, ``warmup``, ``frozen``, ``decode_error``): frames read = their sum;
- ``anomstream_camera_state{state}``: 1 for the camera's state, 0 for the others (cameras only);
- ``anomstream_camera_last_frame_age_seconds``: seconds since the camera's newest frame;
- ``anomstream_latency_seconds{quantile}``: capture to written, over the recent scored frames
  (0.5, 0.95, 0.99: what the store's ``latency_ms`` holds);
- ``anomstream_frame_latency_seconds``: the same as a histogram over every scored frame of the run
  (``_bucket{le}``, ``_sum``, ``_count``; what ``histogram_quantile`` over many runs needs);
- ``anomstream_gaps_total{kind}``: gaps (``disconnect``, ``stall``, ``frozen``);
- ``anomstream_scene_fit{state}``: 1 for whether the calibrated model fits the stream's scene
  (``fits``, ``misfit``, ``drift``: :mod:`pipeline.calibration.scene`), once judged;
- ``anomstream_events_total``: events that ended in this run (all streams, no ``stream`` label);
- ``anomstream_event_open``: 1 while an event is open on the stream (an alert that lasts: an
  event that has not ended is in no count above), for every stream;
- ``anomstream_replica_busy_ratio{node}``: the share of time the node's replicas spent in the model
  over the last seconds (:mod:`pipeline.driver.busy`; once the first answers are in);
- ``anomstream_outbox_messages{sink}``: messages waiting in an outbox (``webhook``, ``mqtt``): a
  receiver that is away or refuses them shows as a growing queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..sources.base import CAMERA_STATES

STATUSES = ("scored", "warmup", "dropped_behind", "source_gap", "decode_error", "frozen")
GAP_KINDS = ("disconnect", "stall", "frozen")
SCENE_STATES = ("fits", "misfit", "drift")


class _RunCollector:
    """One scrape's figures: ``streams`` (stream id -> accounting attrs, as ``WriterActor.accounting``
    gives them), ``run`` (``events``: events ended; ``events_open``: stream id -> events open;
    ``replica_busy``: node id -> share; ``outbox``: sink -> messages waiting)."""

    def __init__(self, streams: dict[str, dict[str, Any]], run: dict[str, Any]) -> None:
        self.streams, self.run = streams, run

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        frames = CounterMetricFamily("anomstream_frames", "Rows written by frame status", labels=["stream", "status"])
        gaps = CounterMetricFamily("anomstream_gaps", "Gaps without usable frames by kind", labels=["stream", "kind"])
        state = GaugeMetricFamily("anomstream_camera_state", "1 for the camera's state", labels=["stream", "state"])
        age = GaugeMetricFamily("anomstream_camera_last_frame_age_seconds", "Seconds since the camera's newest frame",
                                labels=["stream"])
        latency = GaugeMetricFamily("anomstream_latency_seconds", "Capture to written, recent scored frames",
                                    labels=["stream", "quantile"])
        scene = GaugeMetricFamily("anomstream_scene_fit", "1 for whether the model fits the scene", labels=["stream", "state"])
        histogram = HistogramMetricFamily("anomstream_frame_latency_seconds", "Capture to written, every scored frame",
                                          labels=["stream"])
        for stream_id, attrs in sorted(self.streams.items()):
            if attrs.get("scene"):
                for name in SCENE_STATES:
                    scene.add_metric([stream_id, name], 1.0 if attrs["scene"]["state"] == name else 0.0)
            counts = attrs.get("frame_counts", {})
            for status in STATUSES:
                frames.add_metric([stream_id, status], counts.get(status, 0))
            kinds = [gap.get("kind") for gap in attrs.get("gaps", [])]
            for kind in GAP_KINDS:
                gaps.add_metric([stream_id, kind], kinds.count(kind))
            camera = attrs.get("camera")
            if camera:
                for name in CAMERA_STATES:
                    state.add_metric([stream_id, name], 1.0 if camera["state"] == name else 0.0)
                if camera.get("last_frame_age_s") is not None:
                    age.add_metric([stream_id], camera["last_frame_age_s"])
            for key, quantile in (("p50", "0.5"), ("p95", "0.95"), ("p99", "0.99")):
                if attrs.get("latency_ms"):
                    latency.add_metric([stream_id, quantile], attrs["latency_ms"][key] / 1000.0)
            if attrs.get("latency_histogram"):
                counts = attrs["latency_histogram"]
                buckets = [("+Inf" if bound is None else f"{bound:g}", count) for bound, count in zip(counts["le_s"],
                                                                                                     counts["counts"])]
                histogram.add_metric([stream_id], buckets, counts["sum_s"])
        events = CounterMetricFamily("anomstream_events", "Events that ended in this run", value=self.run.get("events", 0))
        yield from (frames, gaps, state, age, latency, histogram, scene, events, *self._open_events(), *self._run_gauges())

    def _open_events(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        if "events_open" not in self.run:
            return
        open_now = GaugeMetricFamily("anomstream_event_open", "1 while an event is open on the stream", labels=["stream"])
        for stream_id in sorted(self.streams):
            open_now.add_metric([stream_id], float(self.run["events_open"].get(stream_id, 0) > 0))
        yield open_now

    def _run_gauges(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        busy = GaugeMetricFamily("anomstream_replica_busy_ratio", "Share of time the node's replicas spent in the model",
                                 labels=["node"])
        for node, share in sorted(self.run.get("replica_busy", {}).items()):
            busy.add_metric([node], share)
        outbox = GaugeMetricFamily("anomstream_outbox_messages", "Messages waiting in an outbox", labels=["sink"])
        for sink, waiting in sorted(self.run.get("outbox", {}).items()):
            outbox.add_metric([sink], waiting)
        yield from (busy, outbox)


def metrics_text(streams: dict[str, dict[str, Any]], run: dict[str, Any]) -> bytes:
    """The run's metrics in Prometheus' text exposition format (see the module text)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RunCollector(streams, run))
    return generate_latest(registry)


def health(streams: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``/healthz``: the run is up (it answers); each camera's state, and how many are not live."""
    cameras = {stream_id: attrs["camera"]["state"] for stream_id, attrs in sorted(streams.items()) if attrs.get("camera")}
    return {"status": "ok", "streams": len(streams), "cameras": cameras,
            "cameras_not_live": sum(state != "live" for state in cameras.values())}
