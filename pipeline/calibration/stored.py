"""Where a run's calibration comes from: a calibration file (``--calibration FILE``, written by
``anomstream calibrate``) or the one stored in the checkpoint (after training, or
``anomstream calibrate --into``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import AnomstreamError
from .scores import Calibration


def save_calibration(calibration: Calibration, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(calibration.to_payload(), temporary)
    temporary.replace(path)


def load_calibration(path: str | Path) -> Calibration:
    """Raises :class:`AnomstreamError` naming the file when it is missing or not a calibration."""
    path = Path(path)
    if not path.is_file():
        raise AnomstreamError(f"--calibration {path}: file not found")
    try:
        return Calibration.from_payload(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:  # noqa: BLE001 - any unreadable content is a bad file
        raise AnomstreamError(f"--calibration {path}: not an anomstream calibration file ({type(error).__name__})") from None


def run_calibration(payload: dict[str, Any], checkpoint_sha256: str, file: str | Path | None) -> Calibration | None:
    """The calibration a run of the checkpoint (``payload``) uses: ``file``'s, else the checkpoint's
    own, else None (scores stay raw). A file fitted for another model or checkpoint is refused."""
    if file is None:
        stored = payload.get("calibration")
        return Calibration.from_payload(stored) if stored else None
    calibration = load_calibration(file)
    if calibration.model != payload["model"]:
        raise AnomstreamError(f"--calibration {file}: fitted for model {calibration.model!r}, "
                              f"the checkpoint is {payload['model']!r}")
    if calibration.checkpoint_sha256 not in (None, checkpoint_sha256):
        raise AnomstreamError(f"--calibration {file}: fitted for another checkpoint (sha256 "
                              f"{calibration.checkpoint_sha256[:12]}...); run anomstream calibrate for this one")
    return calibration
