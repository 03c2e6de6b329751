"""Bar chart of `anomstream bench --json` results (one or more runs).

python benchmarks/plot_bench.py docs/img/bench.png run1.json [run2.json ...]
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STAGES = ["model_fps", "naive_fps", "pipeline1_fps", "pipeline2_fps"]
LABELS = ["model only\n(2 threads)", "naive loop", "pipeline\n1 replica", "pipeline\n2 replicas"]


def main() -> None:
    out, runs = sys.argv[1], [json.load(open(path)) for path in sys.argv[2:]]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        ax.bar(np.arange(len(STAGES)) + i * width, [run[s] for s in STAGES], width, label=f"run {i + 1}")
    ax.set_xticks(np.arange(len(STAGES)) + width * (len(runs) - 1) / 2, LABELS)
    ax.set_ylabel("frames / s")
    ax.set_title("Ped2 clip 04, DMAD CPU checkpoint, batch 16, 2 cores (medians of rounds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main()
