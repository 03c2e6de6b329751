"""A fleet's cameras in one YAML file: ``anomstream live --cameras cameras.yaml``.

.. code-block:: yaml

    cameras:
      - name: gate                      # the stream's name: store group, topics, messages
        url: rtsp://10.0.0.5:554/stream1
        username: viewer                # credentials: never in the file itself
        password_env: GATE_PASSWORD     # ...from an environment variable,
      - name: yard
        url: rtsp://10.0.0.6/live
        password_file: /etc/anomstream/yard.pass   # ...or the first line of a file only you can read
        transport: udp                  # RTSP over udp (default tcp)
        decoder_threads: 2              # slice threads of its decoder (default 1)
        threshold: 4.5                  # this camera's event threshold (calibrated score)
        policy: every                   # every frame, not the latest (default: latest)
        keep_maps: 10                   # the map of every 10th frame only
      - name: loading-dock
        url: rtsp://10.0.0.7/live
        enabled: false                  # kept in the file, not opened

Per-camera values win over the command line's, which are the defaults of the cameras that leave
them out. A camera without credentials here is looked up as a URL on the command line is (netrc,
``ANOMSTREAM_CAMERA_USER``/``_PASSWORD``). A password in the file (``password:``, or in the URL) is
refused: the file is a config others read. One model per run: a camera naming another
``checkpoint`` than the run's is refused (run one ``anomstream live`` per model). Cameras are read
when the run starts: adding or removing one takes a restart.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import format_error, read_yaml
from ..errors import AnomstreamError, ConfigError
from ..events.detector import EventRule
from ..events.webhook import shown_url
from ..paths import expand_path
from .base import Source, StreamSettings
from .camera import Credentials

NAME = re.compile(r"[A-Za-z0-9_.-]+")


class Camera(BaseModel):
    """One camera of the file (see the module's text)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    url: str
    enabled: bool = True
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    transport: Literal["tcp", "udp"] | None = None
    decoder_threads: int | None = Field(default=None, ge=1, le=16)
    threshold: float | None = None
    low_threshold: float | None = None
    policy: Literal["every", "latest"] | None = None
    keep_maps: int | None = Field(default=None, ge=0)
    checkpoint: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME.fullmatch(name):
            raise ValueError("letters, digits, '_', '-' and '.' only (it names the stream and its topics)")
        return name

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        _, slashes, rest = url.partition("://")
        if slashes and "@" in rest and ":" in rest[:rest.rfind("@")]:  # user:password@ (a password may hold '/' or '?')
            raise ValueError(f"{shown_url(url)}: a password in the file; give password_env or password_file")
        return url

    @model_validator(mode="after")
    def _events(self) -> Camera:
        if self.low_threshold is not None and self.threshold is None:
            raise ValueError("low_threshold without threshold (the camera's own threshold)")
        if self.threshold is not None:
            low = self.low_threshold if self.low_threshold is not None else max(self.threshold - 1.0, self.threshold / 2)
            EventRule(self.threshold, low)  # ValueError: not finite, or low above the threshold
        return self

    def settings(self) -> StreamSettings:
        return StreamSettings(self.policy, self.keep_maps, self.threshold, self.low_threshold)


class CamerasFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cameras: list[Camera] = Field(min_length=1)


def read_cameras(path: str | Path, checkpoint: str | Path | None = None) -> list[Camera]:
    """The enabled cameras of ``path``, in file order. Raises AnomstreamError, one line naming the
    file and the key: YAML errors, an unknown key, a name used twice, a password in the file, a
    ``password_env`` that is not set, a ``password_file`` that cannot be read or that others can,
    a ``checkpoint`` other than ``checkpoint`` (the run's)."""
    where = f"--cameras {path}"
    try:
        data = read_yaml(Path(path))
    except ConfigError as error:
        raise ConfigError(f"--cameras {error}") from None
    listed = data.get("cameras") if isinstance(data, dict) else None
    for index, camera in enumerate(listed if isinstance(listed, list) else []):
        if isinstance(camera, dict) and "password" in camera:
            raise AnomstreamError(f"{where}: cameras.{index}.password: a password in the file; give "
                                  f"password_env (an environment variable) or password_file")
    try:
        cameras = CamerasFile.model_validate(data).cameras
    except ValidationError as error:
        raise AnomstreamError(format_error(where, error)) from None
    seen: dict[str, int] = {}
    for index, camera in enumerate(cameras):
        if camera.name in seen:
            raise AnomstreamError(f"{where}: cameras.{index}.name: {camera.name!r} is already cameras.{seen[camera.name]}")
        seen[camera.name] = index
        if camera.checkpoint is not None and checkpoint is not None and \
                Path(expand_path(camera.checkpoint, where)).resolve() != Path(checkpoint).resolve():
            raise AnomstreamError(f"{where}: cameras.{index}.checkpoint: {camera.checkpoint} is not the run's "
                                  f"--checkpoint {checkpoint}: one model per run (run one anomstream live per model)")
        if camera.enabled:  # a missing variable or file: said now, not at connect
            credentials(camera, f"{where}: cameras.{index}")
    return [camera for camera in cameras if camera.enabled]


def credentials(camera: Camera, where: str) -> Credentials | None:
    """The camera's user and password from its ``password_env`` / ``password_file`` (None: none
    given here). Raises AnomstreamError naming ``where`` and the variable or file, never the password."""
    if camera.password_env is not None:
        password = os.environ.get(camera.password_env)
        if not password:
            raise AnomstreamError(f"{where}.password_env: {camera.password_env} is not set")
        return Credentials(_user(camera), password, camera.password_env)
    if camera.password_file is not None:
        path = Path(expand_path(camera.password_file, f"{where}.password_file"))
        try:
            if path.stat().st_mode & 0o077:
                raise AnomstreamError(f"{where}.password_file: {path}: readable by other users (chmod 600 it)")
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise AnomstreamError(f"{where}.password_file: {path}: cannot be read ({error.strerror or error})") from None
        if not lines or not lines[0].strip():
            raise AnomstreamError(f"{where}.password_file: {path}: empty (its first line is the password)")
        return Credentials(_user(camera), lines[0].strip(), str(path))
    return None  # the source looks them up (netrc, environment); a username here still wins


def _user(camera: Camera) -> str:
    """``username``, else the user the URL names (``rtsp://viewer@cam/``), else none."""
    if camera.username is not None:
        return camera.username
    parts = urlsplit(camera.url)
    return unquote(parts.username) if parts.username else ""


def apply_cameras(sources: list[Source], cameras: list[Camera]) -> None:
    """Each camera's own settings, transport and credentials onto its source (matched by name).
    Raises AnomstreamError when another input's stream has a camera's name (the settings and the
    password would go to the wrong one)."""
    by_name = {camera.name: camera for camera in cameras}
    named = [source.stream_id for source in sources if source.stream_id in by_name]
    clashes = sorted({name for name in named if named.count(name) > 1})
    if clashes:
        raise AnomstreamError(f"--cameras: camera {clashes[0]!r} has the name of another input's stream; rename the camera")
    for source in sources:
        camera = by_name.get(source.stream_id)
        if camera is None:
            continue
        source.settings = camera.settings()
        if camera.transport is not None:
            source.decoding = replace(source.decoding, transport=camera.transport)
        if camera.decoder_threads is not None:
            source.decoding = replace(source.decoding, threads=camera.decoder_threads)
        found = credentials(camera, f"--cameras: {camera.name}")
        if found is not None:
            source.credentials = found
        elif camera.username is not None and getattr(source, "credentials", None) is not None:
            source.credentials = replace(source.credentials, user=camera.username)
