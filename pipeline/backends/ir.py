"""An OpenVINO model as bytes, so it travels like the ONNX graph (Ray's object store, the user's
cache): a header, the IR's XML length, the XML, the weights. OpenVINO saves IR only to files and
reads it from memory (``Core.read_model(xml, weights)``)."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np

_MAGIC = b"ANOMSTREAM-OVIR/1"


def pack_ir(model) -> bytes:
    """An ``openvino.Model`` as bytes: a header, the XML's length, the XML, the weights."""
    from .ov import import_openvino

    openvino = import_openvino()

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.xml"
        openvino.save_model(model, path, compress_to_fp16=False)
        xml, weights = path.read_bytes(), path.with_suffix(".bin").read_bytes()
    return _MAGIC + struct.pack("<Q", len(xml)) + xml + weights


def is_ir(graph: bytes) -> bool:
    """Whether ``graph`` is :func:`pack_ir` bytes (else: ONNX)."""
    return graph.startswith(_MAGIC)


def read_ir(core, graph: bytes):
    """The ``openvino.Model`` in :func:`pack_ir` bytes, read from memory by ``core``."""
    from .ov import import_openvino

    openvino = import_openvino()

    start = len(_MAGIC) + 8
    (length,) = struct.unpack("<Q", graph[len(_MAGIC):start])
    xml = graph[start:start + length]
    weights = np.frombuffer(graph, np.uint8, offset=start + length).copy()
    return core.read_model(xml.decode(), openvino.Tensor(weights))
