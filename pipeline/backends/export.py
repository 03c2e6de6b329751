"""``anomstream export``: a checkpoint's scoring graph as ONNX or OpenVINO IR, with what a user of
the files needs beside them (``anomstream.json``): the model and its sizes, the inputs and outputs,
the term weights, the calibration (its reference maps are inside the graph; the statistics that
turn terms into the calibrated score and its threshold are in the JSON) and the measured parity
with torch."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..calibration.stored import run_calibration
from ..checkpoint import model_from_payload, read_checkpoint_and_hash, set_reference_maps
from ..errors import AnomstreamError
from .choice import QUANTIZATION_WINDOWS, GraphCache, choose_backend, parity
from .graph import INPUT_NAME, ONNX_OPSET, output_names
from .ir import is_ir, read_ir
from .quantize import quantized_share
from .runners import BackendError

EXPORT_FORMATS = ("onnx", "openvino")
METADATA = "anomstream.json"
_FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin")}


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path, calibration: str | Path | None = None,
                      precision: str = "fp32", quantization_data: list[str] | None = None) -> dict[str, Any]:
    """Write ``checkpoint``'s scoring graph in ``fmt`` (``onnx``: ``model.onnx``; ``openvino``:
    ``model.xml`` + ``model.bin``, fp32 weights) and ``anomstream.json`` into the folder ``out``;
    returns the metadata. The graph takes ``windows`` uint8 (N, T, C, H, W) and gives ``score``
    float32 (N,), ``map`` float32 (N, H, W) and ``term_<name>`` float32 (N,), N dynamic.

    ``calibration``: a calibration file (default: the checkpoint's own, if any). ``precision``
    ``int8`` (``openvino`` only): the graph quantized by NNCF on windows of ``quantization_data``
    (normal footage; default the calibration's own footage), :mod:`pipeline.backends.quantize`.
    Raises AnomstreamError (one line): unknown format, a folder holding other files, a model whose
    graph cannot be exported (ExportError names the blocking operation), OpenVINO / NNCF not
    installed, no normal footage for int8, an int8 graph that ranks normal windows unlike torch fp32
    (Spearman below ``choice.RANK_AGREEMENT``: the check a run makes at its start)."""
    if fmt not in EXPORT_FORMATS:
        raise AnomstreamError(f"--format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    if precision not in ("fp32", "int8"):
        raise AnomstreamError(f"--precision: {precision!r} is not one of fp32, int8")
    if precision == "int8" and fmt != "openvino":
        raise AnomstreamError("--precision int8: the quantized graph is OpenVINO's (--format openvino)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AnomstreamError(f"{out}: is a file; --out names a folder")
    if out.exists() and any(out.iterdir()) and not (out / METADATA).is_file():
        raise AnomstreamError(f"{out}: folder exists and holds other files; name a new or empty folder")
    payload, sha256 = read_checkpoint_and_hash(checkpoint)
    calibrated = run_calibration(payload, sha256, calibration)
    model = set_reference_maps(model_from_payload(payload, checkpoint), calibrated.reference if calibrated else None)
    cache = GraphCache.for_run(model, checkpoint, sha256, calibrated, quantization_data)
    # before anything is written; int8: refused in one line unless it ranks normal windows as torch fp32 does
    graph = choose_backend("openvino", "int8", cache).graph if precision == "int8" else cache.graph(precision)
    runtime = "openvino" if fmt == "openvino" else "onnxruntime"
    if precision == "int8":
        measured = {"rank_agreement_with_torch": cache.rank_agreement("openvino", "int8"),
                    "quantization": {"footage": cache.footage, "windows": QUANTIZATION_WINDOWS,
                                     "quantized_convolutions": "{} of {}".format(*quantized_share(graph)),
                                     "kept_in_float": list(model.float_scopes())}}
    else:
        measured = {"parity_with_torch": parity(runtime, "fp32", model, graph) if _runtime_installed(fmt) else None}
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        (out / "model.onnx").write_bytes(graph)
    else:
        _save_openvino(graph, out / "model.xml")
    metadata = {"format": fmt, "precision": precision, "files": list(_FILES[fmt]), **_description(model, payload),
                "checkpoint": str(checkpoint), "checkpoint_sha256": sha256,
                "calibration": None if calibrated is None else {
                    **calibrated.summary(), "quantiles": calibrated.quantiles.tolist(), "tail_scale": calibrated.tail_scale,
                    "reference_maps": "inside the graph" if calibrated.reference else "none"},
                "onnx_opset": ONNX_OPSET, "torch": torch.__version__, "anomstream": __version__, **measured}
    (out / METADATA).write_text(json.dumps(metadata, indent=2))
    return metadata


def _description(model, payload: dict[str, Any]) -> dict[str, Any]:
    """The model, its input and outputs as a user of the exported graph needs them."""
    return {"model": model.name, "params": payload["params"],
            "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", model.window_length, model.channels,
                                                                     model.image_size, model.image_size],
                      "layout": "windows of T consecutive frames (the last one is scored), C channels, H, W; "
                                "frames resized to H x W as anomstream prepares them"},
            "outputs": output_names(model), "term_weights": model.term_weights, "window_length": model.window_length}


def _save_openvino(graph: bytes, path: Path) -> None:
    try:
        from .ov import import_openvino

        openvino = import_openvino()
    except ImportError:
        raise BackendError("--format openvino: openvino is not installed (pip install 'anomstream[openvino]')") from None
    model = read_ir(openvino.Core(), graph) if is_ir(graph) else openvino.convert_model(io.BytesIO(graph))
    openvino.save_model(model, str(path), compress_to_fp16=False)


def _runtime_installed(fmt: str) -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino" if fmt == "openvino" else "onnxruntime") is not None
