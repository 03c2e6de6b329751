"""At-least-once delivery of event messages to a webhook, through an on-disk outbox.

Each message is a JSON file in ``OUTBOX/pending/`` (written to a temporary name, then renamed, so a
crash never leaves half a file) named by its stable ``message_id``; a sender thread POSTs the oldest
first and deletes the file only after a 2xx answer. Failures back off exponentially (with jitter)
up to ``max_backoff_s``; messages left when the process stops stay on disk and go out first when an
outbox on the same folder starts again. The receiver deduplicates by ``message_id`` (also sent as the
``Idempotency-Key`` header): a message whose answer was lost is sent again. A message the receiver
refuses for good (a 4xx answer about the message, or a body that is not a message) is moved to
``OUTBOX/rejected/`` so it does not hold up the others.

HTTP as clients do it (RFC 9110): a 307 / 308 redirect is followed with the method, body and headers
kept (at most MAX_REDIRECTS hops, to the same scheme or from http to https); a 301 / 302 / 303 is
not (clients turn the POST into a GET without its body): a failure naming its status and Location.
Credentials in the URL (``https://user:password@host/path``) are sent as HTTP Basic auth and live
only in this process's memory: every URL shown has them masked (:func:`shown_url`).
"""

from __future__ import annotations

import base64
import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import AnomstreamError

MAX_REDIRECTS = 5  # 307 / 308 hops followed for one POST
# 4xx answers about the URL, its credentials or the moment, not the message: kept and tried again
KEPT_4XX = frozenset({401, 403, 404, 405, 407, 408, 429})


def shown_url(url: str) -> str:
    """``url`` with its credentials (``user:password@``) replaced by ``***@``: safe to print or store."""
    scheme, slashes, rest = url.partition("://")
    if not slashes:
        return url
    end = min((i for i in (rest.find(c) for c in "?#") if i >= 0), default=len(rest))
    at = rest[:end].rfind("@")  # the last one: a password may hold an unencoded '/' (base64 tokens)
    return f"{scheme}://***@{rest[at + 1:]}" if at >= 0 else url


@dataclass(frozen=True)
class Webhook:
    """Where messages go: ``url`` without credentials, ``authorization`` the Basic auth header made of
    the ``user:password@`` the URL was given with (in memory only: never shown, stored or logged)."""

    url: str
    authorization: str | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """The URL as printed: ``***@`` where its credentials were."""
        if not self.authorization:
            return self.url
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://***@{rest}"


def parse_webhook(given: str) -> Webhook:
    """``--webhook``'s value: an http(s) URL, with ``user:password@`` for HTTP Basic auth, or
    ``@FILE``: the URL is the file's first word (off the command line, which ``ps`` shows).
    Raises a one-line AnomstreamError naming --webhook, its credentials masked."""
    url = _url_from_file(given[1:]) if given.startswith("@") else given
    shown = shown_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise AnomstreamError(f"--webhook {shown!r}: not a URL (its port is not a number, or a [ is not closed)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AnomstreamError(f"--webhook {shown!r}: not an http:// or https:// URL")
    authorization = None
    if parts.username or parts.password:
        pair = f"{urllib.parse.unquote(parts.username or '')}:{urllib.parse.unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return Webhook(urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])), authorization)


def _url_from_file(name: str) -> str:
    """The first word of file ``name`` (``--webhook @FILE``); a one-line AnomstreamError when there is none."""
    try:
        words = Path(name).expanduser().read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as error:
        raise AnomstreamError(f"--webhook @{name}: cannot read the file ({getattr(error, 'strerror', None) or error})") from None
    if not words:
        raise AnomstreamError(f"--webhook @{name}: the file is empty (it should hold the webhook's URL)")
    return words[0]


class _RedirectRefused(urllib.error.HTTPError):
    """A redirect not followed: ``why``."""

    def __init__(self, request: urllib.request.Request, code: int, msg: str, headers: Any, fp: Any, why: str) -> None:
        super().__init__(request.full_url, code, msg, headers, fp)
        self.why = why


def _same_host(old: urllib.parse.SplitResult, new: urllib.parse.SplitResult) -> bool:
    """Whether credentials go on to ``new``: the same host and port, or http's default port to https's."""
    ports = (old.port or {"http": 80}.get(old.scheme, 443), new.port or {"http": 80}.get(new.scheme, 443))
    return old.hostname == new.hostname and (ports[0] == ports[1] or ports == (80, 443))


class _Redirects(urllib.request.HTTPRedirectHandler):
    """307 / 308 followed with the method, body and headers (the Authorization header to the same
    host only); 301 / 302 / 303, another scheme than the same or http -> https, and more than
    MAX_REDIRECTS hops refused (:class:`_RedirectRefused`)."""

    max_repeats = max_redirections = MAX_REDIRECTS + 1  # urllib's loop check never answers before ours

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request:
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        hops = getattr(req, "hops", 0) + 1
        why = None
        if code not in (307, 308):
            why = (f"not followed (clients turn a POST redirected by {code} into a GET without its body: "
                   f"give --webhook the new URL)")
        elif new.scheme != old.scheme and (old.scheme, new.scheme) != ("http", "https"):
            why = f"refused (from {old.scheme} to {new.scheme}: only the same scheme or http to https is followed)"
        elif hops > MAX_REDIRECTS:
            why = f"refused (more than {MAX_REDIRECTS} redirects)"
        if why is not None:
            raise _RedirectRefused(req, code, msg, headers, fp, why)
        follow = urllib.request.Request(newurl, data=req.data, headers=dict(req.headers), method=req.get_method(),
                                        origin_req_host=req.origin_req_host, unverifiable=True)
        follow.hops = hops
        authorization = req.unredirected_hdrs.get("Authorization")
        if authorization and _same_host(old, new):
            follow.add_unredirected_header("Authorization", authorization)
        return follow


_OPENER = urllib.request.build_opener(_Redirects)


class Undelivered(int):
    """How many messages stay in the outbox (the int), and ``problems``: one line per delivery failure
    that still stands (what refused or kept messages, with how many)."""

    def __new__(cls, left: int = 0, problems: tuple[str, ...] | list[str] = ()) -> Undelivered:
        self = super().__new__(cls, left)
        self.problems = tuple(problems)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return Undelivered, (int(self), self.problems)


class Outbox:
    """Messages waiting for delivery under ``folder``; with ``webhook`` (a URL or a parsed
    :class:`Webhook`), a thread delivers them."""

    def __init__(self, folder: str | Path, webhook: str | Webhook | None = None, timeout_s: float = 5.0,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        self.pending = Path(folder) / "pending"
        self.pending.mkdir(parents=True, exist_ok=True)
        self.rejected_folder = self.pending.parent / "rejected"
        self.webhook = parse_webhook(webhook) if isinstance(webhook, str) else webhook
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
        if self.webhook is not None:
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
        request = urllib.request.Request(self.webhook.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": message_id, "User-Agent": "anomstream"})
        if self.webhook.authorization:
            request.add_unredirected_header("Authorization", self.webhook.authorization)
        with _OPENER.open(request, timeout=self.timeout_s) as answer:
            answer.read()

    def _reject(self, path: Path, reason: str, cause: str) -> None:
        self.rejected_folder.mkdir(exist_ok=True)
        os.replace(path, self.rejected_folder / path.name)
        self.rejected += 1
        self.last_error = reason
        self.refusals[cause] += 1

    def _cause(self, error: Exception) -> str:
        """One attempt's failure: the webhook (credentials masked), where a redirect took it, what went wrong."""
        where = f"webhook {self.webhook.shown}"
        if not isinstance(error, urllib.error.HTTPError):
            return f"{where}: {str(getattr(error, 'reason', error)) or type(error).__name__}"
        redirect = 300 <= error.code < 400
        answered = error.filename if isinstance(error, _RedirectRefused) or not redirect else self.webhook.url
        if answered != self.webhook.url:
            where += f" (redirected to {shown_url(answered)})"
        if not redirect:
            return f"{where}: HTTP {error.code} {error.reason}".rstrip()
        location = error.headers.get("Location") if error.headers is not None else None
        target = shown_url(urllib.parse.urljoin(answered, location)) if location else "nowhere (no Location header)"
        return f"{where}: HTTP {error.code} redirect to {target} {getattr(error, 'why', 'refused')}"

    def _attempt(self, path: Path) -> bool | None:
        """POST the message at ``path``: True when delivered or moved to rejected/, None when it
        failed (``failure`` says why)."""
        try:
            body = path.read_bytes()
            message_id = json.loads(body)["message_id"]
        except (ValueError, KeyError, TypeError, OSError) as error:
            self._reject(path, f"{path.name}: not a message ({error})", f"outbox file {path.name}: not a message ({error})")
            return True
        try:
            self._post(body, message_id)
        except urllib.error.HTTPError as error:
            if 400 <= error.code < 500 and error.code not in KEPT_4XX:
                self._reject(path, f"{message_id}: refused by the receiver (HTTP {error.code})", self._cause(error))
                return True
            self.failure = self._cause(error)
        except Exception as error:  # noqa: BLE001 - any failure of one attempt (reset, timeout, bad answer) is retried
            self.failure = self._cause(error)
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
        and what keeps the rest in pending/, naming the webhook (credentials masked), the status and
        a redirect's target."""
        lines = [f"{cause}; {count} message(s) refused for good, moved to {self.rejected_folder}"
                 for cause, count in self.refusals.items()]
        left = len(self.waiting())
        if left and self.webhook is not None:
            why = self.failure or f"webhook {self.webhook.shown}: the run ended before they were sent"
            lines.append(f"{why}; {left} message(s) kept in {self.pending} for the next run with a webhook")
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
        return len(self.waiting())
