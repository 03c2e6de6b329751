"""OpenVINO (and NNCF) imported without their usage telemetry. On import, OpenVINO's converter sends
a usage event to Google Analytics from a forked process, and the interpreter waits for that process
at exit: on a network without a resolver (camera networks, air-gapped nodes) `anomstream` and the
test suite hung at exit in `getaddrinfo` (seen 2026-12-06). With ``openvino_telemetry`` marked absent,
OpenVINO and NNCF take their own no-telemetry stubs; nothing else changes."""

from __future__ import annotations

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
    import nncf

    return nncf
