"""Runtimes that score a model's exported graph (:mod:`pipeline.backends.graph`) on CPU, in place
of torch: ONNX Runtime and OpenVINO. Each takes the ONNX bytes and the replica's thread count and
answers ``score(windows)`` as ``AnomalyModel.score`` does.

OpenVINO's CPU plugin computes in bf16 by default on CPUs with AMX / AVX512-BF16; the runner asks
for f32 (``INFERENCE_PRECISION_HINT``) unless bf16 is asked for, so scores match torch's on every
CPU, and turns its thread pinning off (two replicas pinned to the same core ran at half speed,
docs/backends.md).
"""

from __future__ import annotations

import io
from typing import Protocol

import numpy as np
import torch

from ...models.base import ScoreOutput
from ..errors import AnomstreamError, first_line
from .graph import INPUT_NAME
from .ir import is_ir, read_ir
from .verdict import QUANTIZED

BACKENDS = ("torch", "onnxruntime", "openvino")
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


class BackendError(AnomstreamError):
    """A backend that is not installed or cannot load the graph."""


class CheckRefusal(BackendError):
    """A backend and precision whose outputs the start-of-run check against torch fp32 refused
    (:func:`pipeline.backends.choice.choose_backend`): what it does to the model, not a missing part."""


class Runner(Protocol):
    def score(self, windows: torch.Tensor) -> ScoreOutput: ...


def _output(values: list[np.ndarray], term_names: list[str]) -> ScoreOutput:
    score, anomaly_map, *terms = (torch.from_numpy(np.asarray(v)) for v in values)
    return ScoreOutput(score, anomaly_map, dict(zip(term_names, terms)))


class OnnxRuntimeRunner:
    """ONNX Runtime's CPU execution provider, ``threads`` intra-op threads, graph optimisations on."""

    def __init__(self, onnx: bytes, term_names: list[str], threads: int | None = None, precision: str = "fp32") -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default (all cores)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        self.term_names = term_names

    def score(self, windows: torch.Tensor) -> ScoreOutput:
        return _output(self.session.run(None, {INPUT_NAME: np.ascontiguousarray(windows.cpu().numpy())}), self.term_names)


class OpenVinoRunner:
    """OpenVINO's CPU plugin: the graph read from memory (ONNX, or an int8 model in
    :func:`pipeline.backends.quantize.pack_ir` bytes), compiled for latency with ``threads`` inference
    threads in ``precision`` (``fp32``; ``bf16`` where the CPU has bf16 units; ``int8``: the quantized
    convolutions in int8, the rest in f32; ``int8-bf16``: the rest in bf16, measured faster where the CPU has bf16 units)."""

    def __init__(self, onnx: bytes, term_names: list[str], threads: int | None = None, precision: str = "fp32") -> None:
        from .ov import import_openvino

        openvino = import_openvino()

        core = openvino.Core()
        # no pinning: OpenVINO pins its threads to cores, and two replicas on one machine then share one core
        float_parts = "bf16" if precision in ("bf16", "int8-bf16") else "f32"
        config = {"INFERENCE_PRECISION_HINT": float_parts, "PERFORMANCE_HINT": "LATENCY",
                  "ENABLE_CPU_PINNING": False}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if is_ir(onnx):
            model = read_ir(core, onnx)
        elif precision in QUANTIZED:
            raise ValueError(f"an {precision} replica needs the quantized graph, not the ONNX one")
        else:
            model = openvino.convert_model(io.BytesIO(onnx))
        self.compiled = core.compile_model(model, "CPU", config)
        self.term_names = term_names
        self._names = ["score", "map", *(f"term_{name}" for name in term_names)]  # by name: NNCF reorders outputs

    def score(self, windows: torch.Tensor) -> ScoreOutput:
        results = self.compiled({INPUT_NAME: np.ascontiguousarray(windows.cpu().numpy())})
        return _output([results[self.compiled.output(name)] for name in self._names], self.term_names)


class ChunkedRunner:
    """A runner whose ``score`` takes at most ``images`` windows per call of the graph, the outputs
    concatenated: an exported graph holds the activations of every window of a call at once, where
    the eager model may cut its work itself (DS2 embeds 1,024 patches at a time; its graph, all 225
    of every image of a call: OpenVINO peaked ~2.7 GB above its start per 4 images, and a batch of 16
    went through in one call)."""

    def __init__(self, runner: Runner, images: int) -> None:
        self.runner, self.images = runner, images

    def call_sizes(self, windows: int) -> set[int]:
        """The distinct window counts of the graph calls that ``score`` makes of ``windows`` windows."""
        return {min(windows, self.images), windows % self.images} - {0}

    def score(self, windows: torch.Tensor) -> ScoreOutput:
        if len(windows) <= self.images:
            return self.runner.score(windows)
        parts = [self.runner.score(chunk) for chunk in windows.split(self.images)]
        return ScoreOutput(torch.cat([part.score for part in parts]), torch.cat([part.anomaly_map for part in parts]),
                           {name: torch.cat([part.terms[name] for part in parts]) for name in parts[0].terms})


def make_runner(backend: str, onnx: bytes, term_names: list[str], threads: int | None = None,
                precision: str = "fp32", images_per_call: int | None = None) -> Runner:
    """A runner of ``backend`` (``onnxruntime`` or ``openvino``) for the exported graph ``onnx``,
    scoring at most ``images_per_call`` windows per call of the graph (None: a batch at once; the
    model's ``images_per_graph_call()``). Raises BackendError (one line) when the backend is not
    installed or cannot load the graph."""
    runners = {"onnxruntime": OnnxRuntimeRunner, "openvino": OpenVinoRunner}
    if backend not in runners:
        raise BackendError(f"--backend: unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    try:
        runner = runners[backend](onnx, term_names, threads, precision)
        return ChunkedRunner(runner, images_per_call) if images_per_call else runner
    except ImportError:
        raise BackendError(f"--backend {backend}: {_PACKAGES[backend]} is not installed "
                           f"(pip install 'anomstream[{backend}]')") from None
    except Exception as error:  # noqa: BLE001 - the runtimes' own load errors
        raise BackendError(f"--backend {backend}: cannot load the exported graph ({first_line(error)})") from None


def installed_backends() -> list[str]:
    """The backends this process can use, torch first."""
    import importlib.util

    return ["torch", *(name for name, package in _PACKAGES.items() if importlib.util.find_spec(package) is not None)]
