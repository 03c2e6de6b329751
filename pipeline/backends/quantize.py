"""INT8 replicas: a model's exported graph quantized after training by NNCF (OpenVINO's quantization
library, ``nncf.quantize``) on windows of normal footage, scored by OpenVINO's CPU plugin.

Only convolutions are quantized (weights per channel, activations per tensor, NNCF's default
preset); every other operation keeps float: the score's arithmetic after the network (box means,
the calibration's z-maps, maxima), DMAD's sampling grids (``GridSample``) and vector-quantizer
distances (a ``MatMul`` followed by ``ArgMin``), DSR's codebook look-ups, and the convolutions that
filter a score map (:func:`map_filters`). A model keeps whole sub-modules out too
(``AnomalyModel.float_scopes()``: its ``quantization_excluded`` and its frozen backbone's): measured
on the shipped Ped2 DMAD (docs/backends.md), quantizing its deformation network moved the
deformation term by 61 % of its range, against 5 % with it kept in float.

The quantized model travels as bytes (:func:`pipeline.backends.ir.pack_ir`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import first_line
from .graph import INPUT_NAME
from .ir import pack_ir, read_ir
from .ov import import_nncf, import_openvino
from .runners import BackendError

QUANTIZED_TYPES = ("Convolution", "ConvolutionBackpropData")
# What quantize_int8 leaves in float, as a number in the cached int8 models' names: raised when that
# changes, so a model quantized by an older rule is not reused (2: score-map filters kept in float; the
# models' own float_scopes are in the name already, with a hash of the models' code).
QUANTIZE_RECIPE = 2


def quantize_int8(onnx: bytes, batches: Iterable[np.ndarray], excluded: tuple[str, ...] = ()) -> bytes:
    """The ONNX scoring graph ``onnx`` quantized to int8 by NNCF, as :func:`pack_ir` bytes.

    ``batches``: uint8 window batches (N, T, C, H, W) of normal footage (NNCF's statistics, all of
    them: the caller picks how many); ``excluded``: sub-module paths (``memory``, ``quantise_lo``: :func:`scope_pattern`)
    whose operations stay in float. Raises BackendError (one line) when NNCF or OpenVINO is missing or
    NNCF fails."""
    try:
        openvino, nncf = import_openvino(), import_nncf()
    except ImportError as error:
        raise BackendError(f"--precision int8: {error.name} is not installed (pip install 'anomstream[openvino]')") from None
    batches = list(batches)
    if not batches:
        raise BackendError("--precision int8: no windows of normal footage to quantize on")
    model = openvino.convert_model(io.BytesIO(onnx))
    other_types = sorted({op.get_type_name() for op in model.get_ordered_ops()} - set(QUANTIZED_TYPES))
    scope = nncf.IgnoredScope(names=map_filters(model), types=other_types,
                              patterns=[scope_pattern(path) for path in excluded], validate=False)
    dataset = nncf.Dataset(batches, lambda batch: {INPUT_NAME: np.ascontiguousarray(batch)})
    quiet = logging.getLogger("nncf")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:  # its progress bars not shown: they broke into bench's table on stdout and into --quiet runs
        with contextlib.redirect_stdout(io.StringIO()):
            quantized = nncf.quantize(model, dataset, subset_size=len(batches), ignored_scope=scope)
    except Exception as error:  # noqa: BLE001 - NNCF's own errors
        raise BackendError(f"--precision int8: NNCF could not quantize the graph ({first_line(error)})") from None
    finally:
        quiet.setLevel(level)
    return pack_ir(quantized)


def scope_pattern(path: str) -> str:
    """The regular expression of the exported graph's operation names under the sub-module ``path``
    (``memory``, ``backbone/stages/stem``): ONNX names them ``/path/...`` after the modules whose
    ``forward`` ran, so a sub-module reached through another method of its parent is named without
    that parent (DSR's ``quantise_lo``, not ``discrete/quantise_lo``)."""
    return f"/{re.escape(path)}/.*"


def map_filters(model: Any) -> list[str]:
    """Names of the convolutions in an OpenVINO ``model`` (``openvino.Model``) that take one channel to
    one channel: filters over a score map (the still models' Gaussian smoothing of the map, DS2's fold of
    patch scores onto pixels), not network layers. Quantized, such a filter's input range is fitted on
    normal footage and every anomalous value above it is clipped to the normal maximum (PaDiM's int8
    model gave every MTD image one score and one map)."""
    weights = {op.get_friendly_name(): op.input(1).get_partial_shape() for op in model.get_ordered_ops()
               if op.get_type_name() in QUANTIZED_TYPES}
    return [name for name, shape in weights.items() if shape.is_static and list(shape.to_shape())[:2] == [1, 1]]


def quantized_share(graph: bytes) -> tuple[int, int]:
    """(quantized convolutions, all convolutions) of :func:`pack_ir` bytes: what int8 covers."""
    from .ov import import_openvino

    openvino = import_openvino()

    model = read_ir(openvino.Core(), graph)
    ops = model.get_ordered_ops()
    convolutions = [op for op in ops if op.get_type_name() in QUANTIZED_TYPES]
    quantized = [op for op in convolutions
                 if any(inp.get_source_output().get_node().get_type_name() == "FakeQuantize"
                        for inp in op.inputs())]
    return len(quantized), len(convolutions)
