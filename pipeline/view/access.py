"""Who may see the live view, its API and its metrics: camera pictures are private.

On loopback (127.0.0.1, ::1, localhost) anyone on the machine may, as before. Bound beyond it
(``--view-host 0.0.0.0``), every request needs the run's token, from ``--view-token-file FILE`` (its
first line) or the environment variable ``ANOMSTREAM_VIEW_TOKEN`` (never on the command line): the
run refuses to start without one. A request carries it as ``Authorization: Bearer TOKEN``
(Prometheus' ``authorization`` setting, scripts), or the browser opens ``/?token=TOKEN`` once: the
page is sent with an HttpOnly, SameSite=Strict cookie and the address without the token.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from ..errors import AnomstreamError

TOKEN_VARIABLE = "ANOMSTREAM_VIEW_TOKEN"
COOKIE = "anomstream_token"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
MIN_TOKEN_LENGTH = 16


def view_token(host: str, token_file: str | Path | None) -> str | None:
    """The token requests must carry (None: none asked, loopback without one). Raises
    AnomstreamError (one line) when ``host`` is beyond loopback and no token is set, the file cannot
    be read, or the token is shorter than 16 characters."""
    if token_file is not None:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise AnomstreamError(f"--view-token-file {token_file}: cannot be read ({error.strerror or error})") from None
        token = lines[0].strip() if lines else ""
        origin = f"--view-token-file {token_file}"
    else:
        token, origin = os.environ.get(TOKEN_VARIABLE, "").strip(), TOKEN_VARIABLE
    if not token:
        if host in LOOPBACK:
            return None
        raise AnomstreamError(f"--view-host {host}: the view shows camera pictures beyond this machine; set a token in "
                              f"{TOKEN_VARIABLE} or --view-token-file FILE (e.g. python -c 'import secrets; "
                              f"print(secrets.token_urlsafe(24))')")
    if len(token) < MIN_TOKEN_LENGTH:
        raise AnomstreamError(f"{origin}: the view token is {len(token)} characters; use at least {MIN_TOKEN_LENGTH}")
    return token


def allowed(token: str, authorization: str | None, cookie: str | None, query: str | None) -> bool:
    """Whether a request carries ``token`` (compared in constant time) in its Authorization header
    (``Bearer TOKEN``), its cookie or its ``token`` query parameter."""
    offered = [cookie, query]
    if authorization and authorization.lower().startswith("bearer "):
        offered.append(authorization[7:].strip())
    return any(value is not None and hmac.compare_digest(value.encode(), token.encode()) for value in offered)
