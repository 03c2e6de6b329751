"""What an outbox delivers through (:class:`Sender`: the webhook, MQTT), and how a sender says a
message is refused for good (:class:`Refused`) rather than failed for now (any other error)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from ..errors import AnomstreamError


class Refused(Exception):
    """The receiver refused the message for good: ``reason`` (one line about the message) and
    ``cause`` (one line about who refused and why, shown once per cause)."""

    def __init__(self, reason: str, cause: str) -> None:
        super().__init__(reason)
        self.reason, self.cause = reason, cause


class Sender(Protocol):
    """Delivers one outbox message at a time (on the outbox's thread)."""

    kind: str  # what the messages are kept for, in messages: "webhook", "MQTT broker"
    article: str  # before ``kind`` in messages: "a", "an"
    shown: str  # who it sends to, credentials masked

    def send(self, message: dict[str, Any], body: bytes) -> None:
        """Deliver ``message`` (``body``: its JSON as stored, with ``message_id``); returns once the
        receiver has it. Raises :class:`Refused` when it never will, any other error to try again."""

    def cause(self, error: Exception) -> str:
        """One line: who failed and why (credentials masked)."""

    def close(self) -> None:
        """Let go of connections (last words, such as MQTT's offline, included)."""


def url_from_file(option: str, name: str, holds: str) -> str:
    """The first word of file ``name`` (``OPTION @FILE``: a URL out of sight of ``ps``); a one-line
    AnomstreamError naming ``option`` when it cannot be read or is empty (``holds``: what it should
    hold, for that message)."""
    try:
        words = Path(name).expanduser().read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as error:
        raise AnomstreamError(f"{option} @{name}: cannot read the file ({getattr(error, 'strerror', None) or error})") from None
    if not words:
        raise AnomstreamError(f"{option} @{name}: the file is empty (it should hold {holds})")
    return words[0]
