"""Checkpoint files: model name + hyper-parameters + weights (+ optimizer state while training), always
written with CPU tensors and read onto the CPU whatever device wrote them; the device a model runs on
(``--device``) and the autocast region of a precision on it."""

from __future__ import annotations

import hashlib
import io
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import TypeAdapter, ValidationError

from ..models.base import AnomalyModel
from ..models.registry import MODELS, build_model
from .config import check_device_name
from .errors import AnomstreamError

FORMAT = "anomstream-checkpoint/1"


def choose_device(requested: str | torch.device | None, option: str = "--device") -> torch.device:
    """The torch device of ``requested``: ``auto`` (or None) is ``cuda`` when torch sees a CUDA device,
    else ``cpu``; ``cpu``; ``cuda`` / ``cuda:N`` when torch sees that device. A ``torch.device`` is
    taken as it is (the device checks of tests/test_devices.py run on ``meta``).

    Raises AnomstreamError naming ``option``: ``--device gpu: one of auto, cpu, cuda, cuda:N``,
    ``--device cuda: torch sees no CUDA device``, ``--device cuda:2: torch sees 1 CUDA device (cuda:0)``."""
    if isinstance(requested, torch.device):
        return requested
    name = check_device_name(requested or "auto", option)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise AnomstreamError(f"{option} {name}: torch sees no CUDA device")
    device, count = torch.device(name), torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise AnomstreamError(f"{option} {name}: torch sees {count} CUDA device{'s' if count > 1 else ''} "
                              f"(cuda:0{f'..cuda:{count - 1}' if count > 1 else ''})")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); CPU for a model that has neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def prepare_device(device: torch.device) -> None:
    """What a run on ``device`` sets once: on CUDA, cuDNN picks the fastest convolution algorithms for
    the shapes it meets (``torch.backends.cudnn.benchmark``; batches keep one shape, so it pays)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def precision_context(precision: str, device: str | torch.device = "cpu") -> AbstractContextManager:
    """The region a model's forward pass runs in for ``precision`` (``train.precision``,
    ``score.precision``) on ``device``: autocast to bf16 with the device's own type (CPU or CUDA), or
    a disabled one for fp32. On a device type autocast does not know (``meta``: the device checks)
    fp32 is a plain region and bf16 a ValueError."""
    device_type = torch.device(device).type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
    if precision == "bf16":
        raise ValueError(f"precision bf16: torch has no autocast on device type {device_type!r}")
    return nullcontext()


def save_checkpoint(path: Path, model: AnomalyModel, extra: dict[str, Any] | None = None) -> None:
    """``model`` (name, hyper-parameters, weights) and ``extra`` to ``path`` (:func:`write_payload`:
    CPU tensors, whatever device the model is on)."""
    write_payload(path, {"format": FORMAT, "model": model.name, "params": asdict(model.config),
                         "state_dict": model.state_dict(), **(extra or {})})


def on_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (inside dicts, lists and tuples) detached and copied to the
    CPU: a checkpoint written on a GPU loads where there is none."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: on_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [on_cpu(item) for item in value]
    if isinstance(value, tuple):
        return tuple(on_cpu(item) for item in value)
    return value


def write_payload(path: Path, payload: dict[str, Any]) -> None:
    """A checkpoint's contents to ``path`` with CPU tensors only (:func:`on_cpu`), atomically (a
    temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(on_cpu(payload), tmp)
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
        from .assets import CONFIGS

        shipped = ", ".join(str(p) for p in sorted((CONFIGS / "weights").glob("*.pt")))
        raise AnomstreamError(f"{path}: checkpoint file not found (shipped checkpoints: {shipped or 'none'})")
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
    dtype; taken as float32, put on the model's device) set (:meth:`AnomalyModel.set_reference`);
    None or empty: as it is."""
    if reference:
        device = model_device(model)
        model.set_reference({name: torch.from_numpy(np.asarray(m, np.float32)).to(device)
                             for name, m in reference.items()})
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
