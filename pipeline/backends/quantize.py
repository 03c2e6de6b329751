"""INT8 replicas: a model's exported graph quantized after training by NNCF (OpenVINO's quantization
library, ``nncf.quantize``) on windows of normal footage, scored by OpenVINO's CPU plugin.

Only convolutions are quantized (weights per channel, activations per tensor, NNCF's default
preset); every other operation keeps float: the score's arithmetic after the network (box means,
the calibration's z-maps, maxima), DMAD's sampling grids (``GridSample``) and vector-quantizer
distances (a ``MatMul`` followed by ``ArgMin``), DSR's codebook look-ups. A model can keep whole
sub-modules out too (``AnomalyModel.quantization_excluded``): measured on the shipped Ped2 DMAD
(docs/backends.md), quantizing its deformation network moved the deformation term by 61 % of its
range, against 5 % with it kept in float.

The quantized model travels as bytes (:func:`pipeline.backends.ir.pack_ir`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable

import numpy as np

from ..errors import first_line
from .graph import INPUT_NAME
from .ir import pack_ir, read_ir
from .ov import import_nncf, import_openvino
from .runners import BackendError

QUANTIZED_TYPES = ("Convolution", "ConvolutionBackpropData")


def quantize_int8(onnx: bytes, batches: Iterable[np.ndarray], excluded: tuple[str, ...] = ()) -> bytes:
    """The ONNX scoring graph ``onnx`` quantized to int8 by NNCF, as :func:`pack_ir` bytes.

    ``batches``: uint8 window batches (N, T, C, H, W) of normal footage (NNCF's statistics, all of
    them: the caller picks how many); ``excluded``: sub-module paths (``memory``, ``discrete/quantise_lo``)
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
    scope = nncf.IgnoredScope(types=other_types, patterns=[f"/{path}/.*" for path in excluded], validate=False)
    dataset = nncf.Dataset(batches, lambda batch: {INPUT_NAME: np.ascontiguousarray(batch)})
    quiet = logging.getLogger("nncf")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantized = nncf.quantize(model, dataset, subset_size=len(batches), ignored_scope=scope)
    except Exception as error:  # noqa: BLE001 - NNCF's own errors
        raise BackendError(f"--precision int8: NNCF could not quantize the graph ({first_line(error)})") from None
    finally:
        quiet.setLevel(level)
    return pack_ir(quantized)


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
