"""OpenVINO (and NNCF) imported without their usage telemetry. On import, OpenVINO's converter sends
a usage event to Google Analytics from a forked process, and the interpreter waits for that process
at exit: on a network without a resolver (camera networks, air-gapped nodes) `anomstream` and the
test suite hung at exit in `getaddrinfo` (seen 2026-12-06). With ``openvino_telemetry`` marked absent,
OpenVINO and NNCF take their own no-telemetry stubs; nothing else changes.

NNCF, while it finds a model's framework, imports ``torch.utils.cpp_extension``, which warns "No CUDA
runtime is found, using CUDA_HOME=..." on any CPU machine with a CUDA toolkit installed: a line about
compiling CUDA extensions that a CPU quantization never does, printed into `live`'s and `score`'s
output (seen 2026-12-06). That import is made first here with its logger quiet."""

from __future__ import annotations

import logging
import sys
from types import ModuleType


def import_openvino() -> ModuleType:
    """The ``openvino`` module, its telemetry left out (ImportError when it is not installed)."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # "import" then raises ImportError
    import openvino

    return openvino


def import_nncf() -> ModuleType:
    """The ``nncf`` module, its telemetry left out (ImportError when it is not installed)."""
    import_openvino()
    _import_cpp_extension_quietly()
    import nncf

    return nncf


def _import_cpp_extension_quietly() -> None:
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        logger.setLevel(level)
