"""Plot every Ped2 test clip's normalised score with its labelled anomalous frames shaded.

python benchmarks/plot_ped2_scores.py STORE.zarr ../shared/data/ped2 docs/img/ped2_scores.png [--combine terms]
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from anomstream.pipeline.datasets.video_labels import ped2_frame_labels  # noqa: E402
from anomstream.pipeline.evaluation.frame_metrics import minmax  # noqa: E402
from anomstream.pipeline.evaluation.video import read_scores, series  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("ped2_root")
    parser.add_argument("out")
    parser.add_argument("--combine", default="terms", choices=["score", "terms"])
    args = parser.parse_args()
    streams, attrs = read_scores(args.store)
    raw = series(streams, args.combine, attrs.get("term_weights", {}))
    labels = ped2_frame_labels(args.ped2_root)
    fig, axes = plt.subplots(3, 4, figsize=(16, 8), dpi=90, sharey=True)
    for ax, (stream_id, stream) in zip(axes.ravel(), streams.items()):
        y = labels[stream_id]
        ax.fill_between(np.arange(len(y)), 0, y, step="mid", color="tab:red", alpha=0.15, lw=0)
        ax.plot(stream.frame_index, minmax(raw[stream_id]), lw=1.2)
        ax.set_title(f"clip {stream_id}", fontsize=9)
    fig.suptitle(f"Ped2 test: per-clip min-max score ({args.combine}); red = labelled anomalous")
    fig.tight_layout()
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
