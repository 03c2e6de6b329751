"""At-least-once delivery of event messages, through an on-disk outbox, to a webhook
(:mod:`.webhook`) or an MQTT broker (:mod:`.mqtt`).

Each message is a JSON file in ``OUTBOX/pending/`` (written to a temporary name, then renamed, so a
crash never leaves half a file) named by its stable ``message_id``; a sender thread sends the oldest
first and deletes the file only once the receiver has it (a 2xx answer, MQTT's PUBACK). Failures
back off exponentially (with jitter) up to ``max_backoff_s``; messages left when the process stops
stay on disk and go out first when an outbox on the same folder starts again. The receiver
deduplicates by ``message_id`` (also the webhook's ``Idempotency-Key`` header): a message whose
answer was lost is sent again. A message the receiver refuses for good
(:class:`~pipeline.events.sending.Refused`, or a body that is not a message) is moved to
``OUTBOX/rejected/`` so it does not hold up the others.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .sending import Refused, Sender
from .webhook import Webhook, WebhookSender, parse_webhook


class Undelivered(int):
    """How many messages stay in the outbox (the int), and ``problems``: one line per delivery failure
    that still stands (what refused or kept messages, with how many)."""

    def __new__(cls, left: int = 0, problems: tuple[str, ...] | list[str] = ()) -> Undelivered:
        self = super().__new__(cls, left)
        self.problems = tuple(problems)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return Undelivered, (int(self), self.problems)


def waiting_in(folder: str | Path) -> list[Path]:
    """The messages not delivered yet of the outbox at ``folder`` (its ``pending/``), oldest first;
    none when it has no such folder. Reading them needs no Outbox (and starts no delivery)."""
    return sorted((Path(folder) / "pending").glob("*.json"))


class Outbox:
    """Messages waiting for delivery under ``folder``; with a ``sender`` (or a webhook: a URL or a
    parsed :class:`~pipeline.events.webhook.Webhook`), a thread delivers them."""

    def __init__(self, folder: str | Path, sender: Sender | str | Webhook | None = None, timeout_s: float = 5.0,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        self.pending = Path(folder) / "pending"
        self.pending.mkdir(parents=True, exist_ok=True)
        self.rejected_folder = self.pending.parent / "rejected"
        if isinstance(sender, str):
            sender = parse_webhook(sender)
        self.sender = WebhookSender(sender, timeout_s) if isinstance(sender, Webhook) else sender
        self.timeout_s, self.backoff_s, self.max_backoff_s = timeout_s, backoff_s, max_backoff_s
        self.delivered = 0
        self.rejected = 0
        self.failed_attempts = 0
        self.last_error: str | None = None
        self.failure: str | None = None  # why the last attempt failed (None after a delivery)
        self.refusals: Counter[str] = Counter()  # why messages were moved to rejected/, how many
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._sequence = 0
        self._thread: threading.Thread | None = None
        if self.sender is not None:
            self._thread = threading.Thread(target=self._deliver_loop, name=f"outbox {self.sender.kind}", daemon=True)
            self._thread.start()

    def put(self, message_id: str, message: dict[str, Any]) -> None:
        """Queue ``message`` (JSON-ready) under its stable id; on disk (synced) before this returns."""
        self._sequence += 1
        name = f"{time.time_ns():020d}-{self._sequence:06d}-{message_id}.json"
        temporary = self.pending / f".{name}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"message_id": message_id, **message}))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.pending / name)
        self._wake.set()

    def waiting(self) -> list[Path]:
        """Messages not delivered yet, oldest first."""
        return waiting_in(self.pending.parent)

    def _reject(self, path: Path, reason: str, cause: str) -> None:
        self.rejected_folder.mkdir(exist_ok=True)
        os.replace(path, self.rejected_folder / path.name)
        self.rejected += 1
        self.last_error = reason
        self.refusals[cause] += 1

    def _attempt(self, path: Path) -> bool | None:
        """Send the message at ``path``: True when delivered or moved to rejected/, None when it
        failed (``failure`` says why)."""
        try:
            body = path.read_bytes()
            message = json.loads(body)
            message["message_id"]  # noqa: B018 - a message has its id
        except (ValueError, KeyError, TypeError, OSError) as error:
            self._reject(path, f"{path.name}: not a message ({error})", f"outbox file {path.name}: not a message ({error})")
            return True
        try:
            self.sender.send(message, body)
        except Refused as refused:
            self._reject(path, refused.reason, refused.cause)
            return True
        except Exception as error:  # noqa: BLE001 - any failure of one attempt (reset, timeout, bad answer) is retried
            self.failure = self.sender.cause(error)
        else:
            path.unlink(missing_ok=True)
            self.delivered += 1
            self.failure = None
            return True
        self.failed_attempts += 1
        self.last_error = self.failure
        return None

    def _deliver_loop(self) -> None:
        delay = self.backoff_s
        while True:
            waiting = self.waiting()
            if not waiting:
                if self._closing.is_set():
                    return
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            if self._attempt(waiting[0]):
                delay = self.backoff_s
                continue
            if self._closing.wait(delay * (0.5 + random.random())):
                return
            delay = min(delay * 2, self.max_backoff_s)

    def problems(self) -> list[str]:
        """One line per delivery failure that still stands: messages moved to rejected/ (by cause)
        and what keeps the rest in pending/, naming the receiver (credentials masked) and why."""
        lines = [f"{cause}; {count} message(s) refused for good, moved to {self.rejected_folder}"
                 for cause, count in self.refusals.items()]
        left = len(self.waiting())
        if left and self.sender is not None:
            why = self.failure or f"{self.sender.shown}: the run ended before they were sent"
            lines.append(f"{why}; {left} message(s) kept in {self.pending} for the next run with "
                         f"{self.sender.article} {self.sender.kind}")
        return lines

    def close(self, wait_s: float = 5.0) -> int:
        """Stop delivering after at most ``wait_s`` seconds of trying to empty the outbox; returns
        how many messages stay on disk for the next start."""
        deadline = time.monotonic() + wait_s
        while self._thread is not None and self.waiting() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1)
            self.sender.close()
        return len(self.waiting())
