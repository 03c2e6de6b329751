"""At-least-once delivery of event messages to a webhook, through an on-disk outbox.

Each message is a JSON file in ``OUTBOX/pending/`` (written to a temporary name, then renamed, so a
crash never leaves half a file) named by its stable ``message_id``; a sender thread POSTs the oldest
first and deletes the file only after a 2xx answer. Failures back off exponentially (with jitter)
up to ``max_backoff_s``; messages left when the process stops stay on disk and go out first when an
outbox on the same folder starts again. The receiver deduplicates by ``message_id`` (also sent as the
``Idempotency-Key`` header): a message whose answer was lost is sent again. A message the receiver
refuses for good (a 4xx answer other than 408 / 429, or a body that is not a message) is moved to
``OUTBOX/rejected/`` so it does not hold up the others; redirects are not followed (a POST
redirected to a GET would lose its body): they count as failures.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.errors import AnomstreamError


def check_webhook(url: str) -> str:
    """``url`` if it is an http(s) URL with a host; else a one-line AnomstreamError naming --webhook."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise AnomstreamError(f"--webhook {url!r}: not an http:// or https:// URL")
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx code


_OPENER = urllib.request.build_opener(_NoRedirect)


class Outbox:
    """Messages waiting for delivery under ``folder``; with ``url``, a thread delivers them."""

    def __init__(self, folder: str | Path, url: str | None = None, timeout_s: float = 5.0,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        self.pending = Path(folder) / "pending"
        self.pending.mkdir(parents=True, exist_ok=True)
        self.url, self.timeout_s = url, timeout_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.delivered = 0
        self.rejected = 0
        self.failed_attempts = 0
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._sequence = 0
        self._thread: threading.Thread | None = None
        if url is not None:
            self._thread = threading.Thread(target=self._deliver_loop, name="webhook", daemon=True)
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
        return sorted(path for path in self.pending.glob("*.json"))

    def _post(self, body: bytes, message_id: str) -> None:
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": message_id, "User-Agent": "anomstream"})
        with _OPENER.open(request, timeout=self.timeout_s) as answer:
            answer.read()

    def _reject(self, path: Path, reason: str) -> None:
        rejected = self.pending.parent / "rejected"
        rejected.mkdir(exist_ok=True)
        os.replace(path, rejected / path.name)
        self.rejected += 1
        self.last_error = reason

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
            path = waiting[0]
            try:
                body = path.read_bytes()
                message_id = json.loads(body)["message_id"]
            except (ValueError, KeyError, TypeError, OSError) as error:
                self._reject(path, f"{path.name}: not a message ({error})")
                continue
            try:
                self._post(body, message_id)
            except urllib.error.HTTPError as error:
                if 400 <= error.code < 500 and error.code not in (408, 429):
                    self._reject(path, f"{message_id}: refused by the receiver (HTTP {error.code})")
                    continue
                failure = f"HTTP {error.code}"
            except Exception as error:  # noqa: BLE001 - any failure of one attempt (reset, timeout, bad answer) is retried
                failure = str(getattr(error, "reason", error)) or type(error).__name__
            else:
                path.unlink(missing_ok=True)
                self.delivered += 1
                delay = self.backoff_s
                continue
            self.failed_attempts += 1
            self.last_error = failure
            if self._closing.wait(delay * (0.5 + random.random())):
                return
            delay = min(delay * 2, self.max_backoff_s)

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
        return len(self.waiting())
