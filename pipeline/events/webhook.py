"""Delivery of outbox messages to a webhook: a POST of the message's JSON per message.

HTTP as clients do it (RFC 9110): a 307 / 308 redirect is followed with the method, body and headers
kept (at most MAX_REDIRECTS hops, to the same scheme or from http to https); a 301 / 302 / 303 is
not (clients turn the POST into a GET without its body): a failure naming its status and Location.
Credentials in the URL (``https://user:password@host/path``) are sent as HTTP Basic auth and live
only in this process's memory: every URL shown has them masked (:func:`shown_url`). A 4xx answer
about the message (not about the URL, its credentials or the moment: KEPT_4XX) refuses it for good.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from ..errors import AnomstreamError
from .sending import Refused, url_from_file

MAX_REDIRECTS = 5  # 307 / 308 hops followed for one POST
# 4xx answers about the URL, its credentials or the moment, not the message: kept and tried again
KEPT_4XX = frozenset({401, 403, 404, 405, 407, 408, 429})


def shown_url(url: str) -> str:
    """``url`` with everything up to its last ``@`` after the scheme replaced by ``***@``: safe to
    print or store (a password may hold ``/``, ``?`` or ``#`` unencoded; a path with an ``@`` is
    masked too: shown less, never a secret)."""
    scheme, slashes, rest = url.partition("://")
    if not slashes or "@" not in rest:
        return url
    return f"{scheme}://***@{rest[rest.rfind('@') + 1:]}"


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
    url = url_from_file("--webhook", given[1:], "the webhook's URL") if given.startswith("@") else given
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


def wanted(message: dict[str, Any]) -> bool:
    """Whether a recorder's message goes to the webhook: every one but a camera's bare state (its
    changes go as ``camera_down`` / ``camera_up``)."""
    return message.get("type") != "camera_state"


class WebhookSender:
    """Sends an outbox message as the body of a POST to ``webhook`` (``Idempotency-Key``: its id)."""

    kind, article = "webhook", "a"

    def __init__(self, webhook: Webhook, timeout_s: float = 5.0) -> None:
        self.webhook, self.timeout_s = webhook, timeout_s

    @property
    def shown(self) -> str:
        return f"webhook {self.webhook.shown}"

    def send(self, message: dict[str, Any], body: bytes) -> None:
        """POST ``body``; raises :class:`Refused` for a 4xx about the message, the error otherwise."""
        request = urllib.request.Request(self.webhook.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": message["message_id"], "User-Agent": "anomstream"})
        if self.webhook.authorization:
            request.add_unredirected_header("Authorization", self.webhook.authorization)
        try:
            with _OPENER.open(request, timeout=self.timeout_s) as answer:
                answer.read()
        except urllib.error.HTTPError as error:
            if 400 <= error.code < 500 and error.code not in KEPT_4XX:
                reason = f"{message['message_id']}: refused by the receiver (HTTP {error.code})"
                raise Refused(reason, self.cause(error)) from None
            raise

    def cause(self, error: Exception) -> str:
        """One attempt's failure: the webhook (credentials masked), where a redirect took it, what went wrong."""
        where = self.shown
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

    def close(self) -> None:
        """Nothing held open between messages."""
