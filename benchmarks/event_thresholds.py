"""Replay a Ped2 store's stored scores through the event detector at several thresholds: recall of
the labelled anomalous segments, events, false events (events overlapping no anomalous frame).

python benchmarks/event_thresholds.py ped2.zarr ../shared/data/ped2 --thresholds 3 2.5 2
"""

from __future__ import annotations

import argparse

from anomstream.pipeline.datasets.video_labels import ped2_frame_labels
from anomstream.pipeline.evaluation.events import segments
from anomstream.pipeline.events.detector import EventDetector, EventRule
from anomstream.pipeline.store import open_results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("ped2_root")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[3.0, 2.5, 2.0])
    args = parser.parse_args()
    labels, root = ped2_frame_labels(args.ped2_root), open_results(args.store)
    for threshold in args.thresholds:
        found = total = events = false = 0
        for stream_id in sorted(root.group_keys()):
            group, y = root[stream_id], labels[stream_id]
            detector = EventDetector(stream_id, EventRule(threshold, threshold - 1.0))
            messages = detector.feed(group["frame_index"][:], group["timestamp"][:], group["score"][:]) + detector.flush()
            spans = [(e.start_frame, e.end_frame) for kind, e in messages if kind == "end"]
            truth = segments(y)
            total += len(truth)
            found += sum(any(a <= last and b >= first for a, b in spans) for first, last in truth)
            events += len(spans)
            false += sum(not y[a:b + 1].any() for a, b in spans)
        print(f"threshold {threshold:g}: recall {found}/{total}  events {events}  false events {false}")


if __name__ == "__main__":
    main()
