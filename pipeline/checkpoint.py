"""Checkpoint files: model name + hyper-parameters + weights (+ optimizer state while training)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import TypeAdapter, ValidationError

from models.base import AnomalyModel
from models.registry import MODELS, build_model
from pipeline.errors import AnomstreamError

FORMAT = "anomstream-checkpoint/1"


def save_checkpoint(path: Path, model: AnomalyModel, extra: dict[str, Any] | None = None) -> None:
    write_payload(path, {"format": FORMAT, "model": model.name, "params": asdict(model.config),
                         "state_dict": model.state_dict(), **(extra or {})})


def write_payload(path: Path, payload: dict[str, Any]) -> None:
    """A checkpoint's contents to ``path``, atomically (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_checkpoint(path: str | Path, expected_model: str | None = None) -> dict[str, Any]:
    """The checkpoint's contents; ``expected_model`` guards against a checkpoint of another model."""
    return read_checkpoint_and_hash(path, expected_model)[0]


def read_checkpoint_and_hash(path: str | Path, expected_model: str | None = None) -> tuple[dict[str, Any], str]:
    """(contents, sha256 of the file's bytes), from one read of the file: what a scoring run reads
    once on the driver and hands to every replica through Ray's object store.

    Raises AnomstreamError naming ``path``: missing, unreadable, not an anomstream checkpoint, or
    for another model than ``expected_model``."""
    path = Path(path)
    if not path.is_file():
        raise AnomstreamError(f"{path}: checkpoint file not found")
    data = path.read_bytes()
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file
        raise AnomstreamError(f"{path}: not a readable checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise AnomstreamError(f"{path}: not an anomstream checkpoint")
    if expected_model is not None and payload["model"] != expected_model:
        raise AnomstreamError(f"{path}: checkpoint is for model {payload['model']!r}, not {expected_model!r}")
    return payload, hashlib.sha256(data).hexdigest()


def checkpoint_params(payload: dict[str, Any], path: str | Path) -> Any:
    """The checkpoint's hyper-parameters as its model's config dataclass."""
    name = payload["model"]
    if name not in MODELS:
        raise AnomstreamError(f"{path}: checkpoint model {name!r} is unknown to this version")
    try:
        return TypeAdapter(MODELS[name][1]).validate_python(payload["params"])
    except ValidationError as error:
        raise AnomstreamError(f"{path}: checkpoint hyper-parameters do not fit {name!r}: {error.errors()[0]['msg']}") from None


def load_model(path: str | Path, expected_model: str | None = None) -> tuple[AnomalyModel, dict[str, Any]]:
    """Build the checkpoint's model with its weights, in eval mode."""
    payload = read_checkpoint(path, expected_model)
    return model_from_payload(payload, path), payload


def set_reference_maps(model: AnomalyModel, reference: dict[str, Any] | None) -> AnomalyModel:
    """``model`` with a calibration's per-position normal maps (name -> (H, W) array, any float
    dtype; taken as float32) set (:meth:`AnomalyModel.set_reference`); None or empty: as it is."""
    if reference:
        model.set_reference({name: torch.from_numpy(np.asarray(m, np.float32)) for name, m in reference.items()})
    return model


def model_from_payload(payload: dict[str, Any], origin: str | Path) -> AnomalyModel:
    """The model of a checkpoint's contents (:func:`read_checkpoint`) with its weights, in eval mode;
    ``origin`` names the checkpoint in errors (AnomstreamError: unknown model, parameters or weights
    that do not fit)."""
    name = payload["model"]
    model = build_model(name, checkpoint_params(payload, origin))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise AnomstreamError(f"{origin}: weights do not fit model {name!r}: {str(error).splitlines()[0]}") from None
    model.eval()
    return model


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
