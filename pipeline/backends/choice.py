"""Which backend a run's replicas score with, decided once by the driver: the exported graph is
made (or read from the user's cache), checked against torch on the same windows,
and handed to every replica through Ray's object store with the checkpoint.

``auto`` takes the fastest installed backend that passes the check (measured on this 2-core CPU,
docs/backends.md: in fp32 ONNX Runtime, as fast as OpenVINO and quicker to load; in bf16
OpenVINO), torch when the replicas are on a GPU, when nothing else is installed, or when the graph
cannot be exported.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ...models.base import AnomalyModel
from ..errors import first_line
from .graph import ONNX_OPSET, ExportError, example_windows, export_onnx
from .runners import BACKENDS, BackendError, installed_backends, make_runner

PRECISIONS = ("fp32", "bf16")
# largest |backend - torch| allowed at the check, relative to the largest |torch| value of each
# output (measured on real frames, docs/backends.md: fp32 at most 5e-5; OpenVINO bf16 1e-2 to 3e-2
# on most models' scores and maps, 0.6 on DSR's map, which the check then refuses)
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}


@dataclass(frozen=True)
class BackendChoice:
    """What replicas score with: ``backend`` (``torch``, ``onnxruntime``, ``openvino``), its
    ``precision`` and, for the runtimes, the exported ONNX ``graph``; ``note``: why ``auto`` chose it.
    ``required``: asked for by name, so a replica that cannot load it fails (``auto``: it scores with
    torch instead and says so)."""

    backend: str = "torch"
    precision: str = "fp32"
    graph: bytes | None = None
    note: str | None = None
    required: bool = False


def choose_backend(requested: str, precision: str, model: AnomalyModel | Callable[[], AnomalyModel] | None,
                   checkpoint: str | Path, sha256: str, reference: dict[str, np.ndarray] | None = None,
                   on_gpu: bool = False) -> BackendChoice:
    """The backend for ``requested`` (one of ``BACKENDS`` or ``auto``). ``model``: the checkpoint's
    model with its weights and a calibration's ``reference`` maps, in eval mode, or a function that
    builds it (called only when the graph or its check is not cached yet). Raises BackendError /
    ExportError (one line) for an explicit backend that is not installed, cannot export the model
    or fails the check; ``auto`` falls back to torch instead (``note`` says why)."""
    if precision not in PRECISIONS:
        raise BackendError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if requested not in (*BACKENDS, "auto"):
        raise BackendError(f"--backend: unknown backend {requested!r}; one of {', '.join(BACKENDS)}, auto")
    if requested == "onnxruntime" and precision != "fp32":
        raise BackendError("--backend onnxruntime computes in fp32 only (--precision fp32)")
    if requested == "torch":
        return BackendChoice("torch", precision)
    cache = GraphCache(model, checkpoint, sha256, reference)
    if requested != "auto":
        return replace(_checked(requested, precision, cache), required=True)
    if on_gpu:
        return BackendChoice("torch", precision, note="replicas on a GPU")
    installed = installed_backends()
    order = ["openvino"] if precision == "bf16" else ["onnxruntime", "openvino"]  # fp32: as fast, loads in 0.1 s
    candidates = [name for name in order if name in installed]
    if not candidates:
        return BackendChoice("torch", precision, note="neither onnxruntime nor openvino is installed")
    failures = []
    for name in candidates:
        try:
            return _checked(name, precision, cache)
        except ExportError as error:
            return BackendChoice("torch", precision, note=str(error))
        except BackendError as error:
            failures.append(str(error))
    return BackendChoice("torch", precision, note="; ".join(failures))


def _checked(backend: str, precision: str, cache: GraphCache) -> BackendChoice:
    """``backend`` on the cached graph after its outputs matched torch's on the same windows."""
    difference = cache.parity(backend, precision)
    worst = max(difference, key=lambda name: np.nan_to_num(difference[name], nan=np.inf))
    if not difference[worst] <= TOLERANCE[precision]:  # NaN fails too
        raise BackendError(f"--backend {backend}: its {worst} differs from torch's by {difference[worst]:.2g} of its "
                           f"range (allowed {TOLERANCE[precision]:g} in {precision}); use --backend torch")
    return BackendChoice(backend, precision, cache.graph())


class GraphCache:
    """A checkpoint's exported graph and its checks against torch, kept in the user's cache folder
    (``$XDG_CACHE_HOME/anomstream/exports``, else ``~/.cache/...``): a run finds both there and
    builds no model."""

    def __init__(self, model: AnomalyModel | Callable[[], AnomalyModel] | None, checkpoint: str | Path, sha256: str,
                 reference: dict[str, np.ndarray] | None = None) -> None:
        self._model, self.checkpoint = model, Path(checkpoint)
        digest = hashlib.sha256(_models_source())  # a change of the models' code makes a new graph
        for key in sorted(reference or {}):
            digest.update(key.encode() + np.ascontiguousarray(reference[key], np.float32).tobytes())
        self.name = f"{sha256[:20]}-{digest.hexdigest()[:8]}-opset{ONNX_OPSET}-torch{torch.__version__.split('+')[0]}"
        self._graph: bytes | None = None

    @property
    def model(self) -> AnomalyModel:
        if self._model is None:
            raise ValueError("no model to export")
        if not isinstance(self._model, AnomalyModel):
            self._model = self._model()
        return self._model

    def graph(self) -> bytes:
        """The model's ONNX graph (exported and cached on first use; ExportError if it cannot be)."""
        if self._graph is None:
            found = self._find(".onnx")
            self._graph = found.read_bytes() if found else export_onnx(self.model)
            if not found:
                self._store(".onnx", self._graph)
        return self._graph

    def parity(self, backend: str, precision: str) -> dict[str, float]:
        """:func:`parity` of ``backend`` in ``precision`` (the runtime's version in the key), measured once."""
        key = f"{backend}-{_runtime_version(backend)}-{precision}"
        found = self._find(".parity.json")
        measured = json.loads(found.read_text()) if found else {}
        if key not in measured:
            measured[key] = parity(backend, precision, self.model, self.graph())
            self._store(".parity.json", json.dumps(measured).encode())
        return measured[key]

    def _find(self, suffix: str) -> Path | None:
        return next((folder / (self.name + suffix) for folder in _cache_folders(self.checkpoint)
                     if (folder / (self.name + suffix)).is_file()), None)

    def _store(self, suffix: str, data: bytes) -> None:
        for folder in _cache_folders(self.checkpoint):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".part") as part:
                    part.write(data)
                os.replace(part.name, folder / (self.name + suffix))  # another run never reads half a file
                return
            except OSError:
                continue


def _runtime_version(backend: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(backend)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parity(backend: str, precision: str, model: AnomalyModel, graph: bytes, windows: torch.Tensor | None = None,
           threads: int | None = None) -> dict[str, float]:
    """Per output (``score``, ``map``, ``term_*``): the largest |backend - torch| over ``windows``
    (default: 4 noise windows), divided by the largest |torch| of that output."""
    windows = example_windows(model, 4, seed=1) if windows is None else windows
    with torch.inference_mode():
        reference = model.score(windows)
    runner = make_runner(backend, graph, model.term_names, threads, precision)
    try:
        output = runner.score(windows)
        missing = set(model.term_names) - set(output.terms)
        if missing:
            raise ValueError(f"the graph lacks the terms {', '.join(sorted(missing))}")
    except Exception as error:  # noqa: BLE001 - the runtimes' own errors while scoring
        raise BackendError(f"--backend {backend}: scoring the exported graph failed ({first_line(error)})") from None
    pairs = {"score": (output.score, reference.score), "map": (output.anomaly_map, reference.anomaly_map),
             **{f"term_{name}": (output.terms[name], reference.terms[name]) for name in model.term_names}}
    return {name: float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-12))
            for name, (got, want) in pairs.items()}


def _models_source() -> bytes:
    from ... import models

    return b"".join(path.read_bytes() for path in sorted(Path(models.__file__).parent.glob("*.py")))


def _cache_folders(checkpoint: Path) -> list[Path]:
    """Where exported graphs are kept: the user's cache folder only. Nothing is written beside the
    checkpoint (it may sit in site-packages, a shared models folder or a read-only mount)."""
    return [Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "anomstream" / "exports"]
