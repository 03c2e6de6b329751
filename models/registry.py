"""Model names -> (class, hyper-parameter dataclass)."""

from __future__ import annotations

from models.base import AnomalyModel
from models.dmad import DMAD, DMADConfig

MODELS: dict[str, tuple[type[AnomalyModel], type]] = {
    "dmad": (DMAD, DMADConfig),
}


def build_model(name: str, params: object) -> AnomalyModel:
    model_class, _ = MODELS[name]
    return model_class(params)
