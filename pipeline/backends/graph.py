"""A model's scoring graph as ONNX: windows uint8 (N, T, C, H, W) -> score (N,), map (N, H, W) and
one (N,) output per score term, with a dynamic batch (``torch.onnx.export``, TorchScript tracing)."""

from __future__ import annotations

import io
import re
import warnings

import torch

from ...models.base import AnomalyModel
from ..errors import AnomstreamError, first_line

ONNX_OPSET = 17
INPUT_NAME = "windows"


class ExportError(AnomstreamError):
    """A model whose scoring graph cannot be exported; the torch backend still serves it."""


class ScoringGraph(torch.nn.Module):
    """``model.score`` as a module with plain tensor outputs: (score, map, *terms in ``model.term_names``)."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model.score(windows)
        return (output.score, output.anomaly_map, *(output.terms[name] for name in self.model.term_names))


def output_names(model: AnomalyModel) -> list[str]:
    """The graph's outputs in order: ``score``, ``map``, ``term_<name>`` for each term."""
    return ["score", "map", *(f"term_{name}" for name in model.term_names)]


def example_windows(model: AnomalyModel, count: int = 2, seed: int = 0) -> torch.Tensor:
    """uint8 (count, T, C, H, W) noise windows of the model's shape (tracing, parity checks)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (count, model.window_length, model.channels, model.image_size, model.image_size)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)


def export_onnx(model: AnomalyModel) -> bytes:
    """The model's scoring graph as ONNX bytes (opset ``ONNX_OPSET``, dynamic batch). Raises
    ExportError (one line naming the model and the operation that blocks it)."""
    was_training = model.training
    graph = ScoringGraph(model).eval()  # the exporter restores the wrapper's mode to every module after
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes on shape arithmetic: sizes are fixed by the model
            dynamic = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in output_names(model)}}
            torch.onnx.export(graph, (example_windows(model),), buffer, input_names=[INPUT_NAME],
                              output_names=output_names(model), dynamic_axes=dynamic, opset_version=ONNX_OPSET,
                              dynamo=False)
    except Exception as error:  # noqa: BLE001 - the exporter raises many kinds
        raise ExportError(f"model {model.name!r} cannot be exported to ONNX: {_blocking_operation(error)}; "
                          f"the torch backend still serves it") from None
    finally:
        model.train(was_training)
    return buffer.getvalue()


DISCRETE_OPERATIONS = ("ArgMin", "ArgMax")  # a choice among near-equal values: a vector quantizer's codeword


def makes_discrete_choices(graph: bytes) -> bool:
    """Whether an ONNX ``graph`` picks by ``DISCRETE_OPERATIONS`` (DMAD's and DSR's vector quantizers:
    ``argmin`` of codeword distances), where two runtimes may pick differently between near-equal
    values; False when ``onnx`` cannot read it."""
    try:
        import onnx

        nodes = onnx.load_from_string(graph).graph.node
    except Exception:  # noqa: BLE001 - not installed, or not an ONNX graph (OpenVINO IR)
        return False
    return any(node.op_type in DISCRETE_OPERATIONS for node in nodes)


def _blocking_operation(error: Exception) -> str:
    text = str(error)
    found = re.search(r"operator '?([\w:.]+)'?", text)
    first = first_line(error)
    return f"operation {found.group(1)} ({first})" if found else f"{type(error).__name__}: {first}"
