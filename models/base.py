"""The interface every anomaly model implements, so one training loop and one replica serve all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ScoreOutput:
    """Per-item scores of one batch: higher means more anomalous."""

    score: torch.Tensor  # (N,)
    anomaly_map: torch.Tensor  # (N, H, W), the per-pixel map the score derives from
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N,) raw score components


@dataclass
class LabelledAnomalies:
    """A few labelled anomalous images drawn into a training step (models that learn from them)."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    masks: torch.Tensor  # float (N, H, W): share of each pixel inside the defect
    has_mask: torch.Tensor  # bool (N,): False = only the image is known to be anomalous


class AnomalyModel(nn.Module):
    """Base class: inputs are uint8 windows (N, T, C, H, W), T = ``window_length``.

    For a video model the last frame of the window is the one being scored and the first
    T-1 frames are its context; still-image models have T = 1.
    """

    name: str = "abstract"
    window_length: int = 1
    channels: int = 3
    image_size: int = 256
    # Weights of the raw score terms when they are combined after per-video min-max normalisation.
    term_weights: dict[str, float] = {}
    # Terms a calibration standardises on normal data and sums, with their weights (default: the score).
    calibration_terms: dict[str, float] = {}
    # False for models fitted only by statistics (e.g. a Gaussian on frozen features): no epochs run.
    trains_by_gradient: bool = True
    # True for models whose training_loss takes labelled anomalies (``train.anomalies`` in a config).
    learns_from_anomalies: bool = False
    # True for models with a ``fit_statistics`` pass after gradient training.
    fits_statistics: bool = False
    # Shares of training (0..1) at which the model starts training other parts (DSR's stage 3); the
    # learning-rate warm-up and cosine start again at each.
    training_phases: tuple[float, ...] = ()
    # Sub-module paths (ONNX scopes: the names of the modules whose ``forward`` ran, joined by ``/``, a
    # list's index kept as ``blocks.0``; a module reached through another method of its parent is named
    # without it) whose operations stay in float when the scoring graph is quantized to int8: sampling
    # grids, vector-quantizer distances. See ``float_scopes`` for what sub-modules add.
    quantization_excluded: tuple[str, ...] = ()

    def float_scopes(self) -> tuple[str, ...]:
        """Every scope kept in float by int8 quantization: ``quantization_excluded`` and the scopes the
        model's direct sub-modules name themselves (a frozen backbone's ``float_scopes``), prefixed."""
        nested = [f"{name}/{scope}" for name, child in self.named_children() if hasattr(child, "float_scopes")
                  for scope in child.float_scopes()]
        return (*self.quantization_excluded, *nested)

    def images_per_graph_call(self) -> int | None:
        """The most windows the exported scoring graph should take per call (its memory grows with
        them; the eager ``score`` may cut its own work), or None: a whole batch."""
        return None

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames -> float input in [-1, 1]."""
        return frames.float() / 127.5 - 1.0

    def training_loss(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms on a batch of uint8 windows of normal data; key ``loss`` is the total to minimise.
        Models with ``learns_from_anomalies`` also take ``anomalies: LabelledAnomalies | None``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement training_loss")

    def score(self, windows: torch.Tensor) -> ScoreOutput:
        raise NotImplementedError(f"{type(self).__name__} does not implement score")

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": learning_rate}]

    def builds_on(self) -> str | None:
        """Path of an earlier checkpoint of this model that a new training run starts from (DSR's
        stage 1); default: none."""
        return None

    def start_from(self, checkpoint: dict) -> None:
        """Take what this model reuses from the ``builds_on`` checkpoint (its ``params`` and ``state_dict``)."""

    def initialise_from_frames(self, frames: torch.Tensor) -> None:
        """Data-dependent initialisation from uint8 training frames (N, C, H, W); default: nothing."""

    def after_optimizer_step(self, progress: float) -> None:
        """Called after every optimizer step with the share of training done (0..1), e.g. for a
        momentum (EMA) target network; default: nothing."""

    @property
    def scores_anomalies(self) -> bool:
        """False for a model that is only a stage of another (DSR's stage 1): nothing to calibrate."""
        return True

    @property
    def term_names(self) -> list[str]:
        """Every term ``score`` returns (stored as ``term_<name>``)."""
        return list(dict.fromkeys([*self.term_weights, *self.calibration_terms]))

    def reference_maps(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-pixel maps (N, H, W) of uint8 windows whose per-position median on normal data the
        model subtracts in some score terms, and by whose per-position robust scale it divides
        (see :meth:`set_reference`); default: none."""
        return {}

    def set_reference(self, reference: dict[str, torch.Tensor]) -> None:
        """From a calibration, per map NAME of :meth:`reference_maps`: ``NAME`` its per-position normal
        median (H, W) and ``NAME_scale`` its per-position robust scale (H, W, > 0; calibrations made
        before scales were kept have none)."""
        if reference:
            raise ValueError(f"{self.name} takes no reference maps, got {', '.join(reference)}")

    def fit_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        """After gradient training, one pass over the training windows (uint8, in order, eval mode)
        for models that fit statistics of normal data (densities, score ranges); default: nothing."""
