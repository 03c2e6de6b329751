"""Paths as people write them: ``~`` and environment variables expanded once, in one place.

Every path a user gives (command-line path options, config paths, manifest lines) goes through
:func:`expand_path`, source specs through :func:`expand_spec`: a leading ``~`` or ``~user`` and
``$NAME`` / ``${NAME}`` anywhere are expanded once (a variable's value is not expanded again), so
``--out=~/x`` (which the shell leaves as written) and ``output_dir: ~/runs`` in a config mean the
home folder, and the path printed is the path used. URLs (``rtsp://``, ``s3://``, ...) and paths
that exist as written (a file named ``cam$A.mp4``) are kept as written. An unset variable or an
unknown user is an error, never a folder named ``$X`` or ``~``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ConfigError

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
PREFIX = re.compile(r"^(?P<prefix>[A-Za-z][A-Za-z0-9_]*):(?!//)")  # camera:0, mtd:ROOT, linescan:SPEC


def is_url(value: str) -> bool:
    """Whether ``value`` is a URL (``scheme://...``): never expanded."""
    return bool(URL.match(value))


def expand_path(value: str, option: str) -> str:
    """``value`` with a leading ``~`` / ``~user`` and ``$NAME`` / ``${NAME}`` expanded, once; a URL
    as written. Raises :class:`ConfigError` naming ``option`` (``--out``, ``train.output_dir``) for
    an unset variable or an unknown user."""
    if is_url(value) or ("$" in value and _exists(Path(value))):
        return value  # a URL, or a path that exists as written (a folder named 'cam$A', a venv under '/opt/app$v2')
    head, sep, rest = value.partition("/") if value.startswith("~") else ("", "", value)
    home = os.path.expanduser(head) if head else ""
    if head and home == head:
        raise ConfigError(f"{option}: no user {head[1:]!r} for {head} in {value!r} (write ./{value} for a folder "
                          f"of that name)")
    return home + sep + VARIABLE.sub(lambda match: _variable(match, value, option), rest)


def expand_spec(spec: str, option: str, base: Path | None = None) -> str:
    """A source spec with its path expanded as :func:`expand_path` does: ``mvtec:~/tiles?split=train``
    -> ``mvtec:/home/me/tiles?split=train``. A spec that names an existing path as written (relative
    to ``base``, else the working folder) and URLs are kept as written."""
    if is_url(spec) or _exists((base or Path()) / spec):
        return spec
    prefix = PREFIX.match(spec)
    if prefix:
        return prefix.group() + expand_spec(spec[prefix.end():], option, base)
    return expand_path(spec, option)


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; a name the system cannot hold (too long, a NUL) does not."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _variable(match: re.Match, value: str, option: str) -> str:
    name = match.group("braced") or match.group("plain")
    if name not in os.environ:
        raise ConfigError(f"{option}: environment variable {name} is not set (in {value!r})")
    return os.environ[name]


def expand_input(spec: str, base: Path | None = None) -> str:
    """An input of a run (a source given to ``score`` / ``live``, a manifest line) expanded as
    :func:`expand_spec` does; one that cannot be (an unset variable) stays as written, so that it
    fails alone as an input that does not exist while every other input is scored."""
    try:
        return expand_spec(spec, "source", base)
    except ConfigError:
        return spec


def user_cache() -> Path:
    """anomstream's folder in the user's cache: ``$XDG_CACHE_HOME/anomstream``, else ``~/.cache/anomstream``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "anomstream"
