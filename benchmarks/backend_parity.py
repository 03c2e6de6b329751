"""Parity of the replica backends with torch on real frames, per model: prints the markdown table of
docs/backends.md. Run from the repository root: ``python benchmarks/backend_parity.py``."""

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
warnings.simplefilter("ignore")  # the exporter's tracer notes
torch.set_num_threads(2)

from small_models import SMALL, still_windows  # noqa: E402

from anomstream.pipeline.backends.choice import parity  # noqa: E402
from anomstream.pipeline.backends.graph import export_onnx  # noqa: E402
from anomstream.pipeline.checkpoint import load_model  # noqa: E402
from anomstream.pipeline.datasets.layouts import mtd_split  # noqa: E402
from anomstream.pipeline.files import read_image  # noqa: E402
from anomstream.pipeline.stream.preprocess import prepare_frame  # noqa: E402

shared = REPO.parent / "shared" / "data"
train, test = mtd_split(shared / "mtd")
normal = still_windows([r.path for r in train[:12]], 64)
cracks = still_windows([r.path for r in test if r.category == "MT_Crack"][:4], 64)
print("| model | ONNX Runtime fp32 score / map / worst term | OpenVINO fp32 | OpenVINO bf16 |")
print("| --- | --- | --- | --- |")
for name in ["dmad", *sorted(SMALL)]:
    torch.manual_seed(0)
    if name == "dmad":
        model, _ = load_model(REPO / "configs" / "weights" / "ped2_dmad_cpu.pt")
        paths = sorted((shared / "ped2/testing/frames/01").iterdir())[120:130]
        frames = np.stack([prepare_frame(read_image(p), 128, 1) for p in paths])
        windows = torch.from_numpy(np.stack([frames[i:i + 5] for i in range(6)]))
        label = "DMAD (shipped, Ped2 clip 01 frames 124-129)"
    else:
        model_class, config = SMALL[name]
        model, windows = model_class(config).eval(), cracks
        if model.fits_statistics:
            model.fit_statistics([normal[:6], normal[6:]])
        label = f"{name} (small config, 4 MTD cracks)"
    graph = export_onnx(model)
    cells = []
    for backend, precision in (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")):
        measured = parity(backend, precision, model, graph, windows)
        terms = [v for k, v in measured.items() if k.startswith("term_")]
        worst_term = f"{max(terms):.1e}" if terms else "-"
        cells.append(f"{measured['score']:.1e} / {measured['map']:.1e} / {worst_term}")
    print(f"| {label} | " + " | ".join(cells) + " |")
