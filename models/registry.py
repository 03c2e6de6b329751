"""Model names -> (class, hyper-parameter dataclass), each model's module imported when first asked
for (a DMAD replica need not import torchvision for the still models' backbones)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module

from .base import AnomalyModel

_PLACES = {  # name -> (module, model class, config class)
    "dmad": (".dmad", "DMAD", "DMADConfig"),
    "adtr": (".adtr", "ADTR", "ADTRConfig"),
    "ds2": (".ds2", "DS2", "DS2Config"),
    "dsr": (".dsr", "DSR", "DSRConfig"),
    "favae": (".favae", "FAVAE", "FAVAEConfig"),
    "padim": (".padim", "PaDiM", "PaDiMConfig"),
}


class _Registry(Mapping[str, tuple[type[AnomalyModel], type]]):
    def __getitem__(self, name: str) -> tuple[type[AnomalyModel], type]:
        module, model_class, config_class = _PLACES[name]
        loaded = import_module(module, __package__)
        return getattr(loaded, model_class), getattr(loaded, config_class)

    def __contains__(self, name: object) -> bool:  # without importing the model's module
        return name in _PLACES

    def __iter__(self) -> Iterator[str]:
        return iter(_PLACES)

    def __len__(self) -> int:
        return len(_PLACES)


MODELS: Mapping[str, tuple[type[AnomalyModel], type]] = _Registry()


def build_model(name: str, params: object) -> AnomalyModel:
    """The model ``name`` (a key of :data:`MODELS`) built from its config dataclass ``params``."""
    model_class, _ = MODELS[name]
    return model_class(params)
