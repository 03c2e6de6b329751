"""Model names -> (class, hyper-parameter dataclass)."""

from __future__ import annotations

from models.adtr import ADTR, ADTRConfig
from models.base import AnomalyModel
from models.dmad import DMAD, DMADConfig
from models.ds2 import DS2, DS2Config
from models.dsr import DSR, DSRConfig
from models.favae import FAVAE, FAVAEConfig
from models.padim import PaDiM, PaDiMConfig

MODELS: dict[str, tuple[type[AnomalyModel], type]] = {
    "dmad": (DMAD, DMADConfig),
    "adtr": (ADTR, ADTRConfig),
    "ds2": (DS2, DS2Config),
    "dsr": (DSR, DSRConfig),
    "favae": (FAVAE, FAVAEConfig),
    "padim": (PaDiM, PaDiMConfig),
}


def build_model(name: str, params: object) -> AnomalyModel:
    model_class, _ = MODELS[name]
    return model_class(params)
