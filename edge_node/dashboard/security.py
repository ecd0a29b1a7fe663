"""Who may watch and who may act: the operator token, the limit on wrong guesses, and the cross-site request
checks. Pure: time is passed in.

The token travels only in an ``Authorization: Bearer`` header that the page's own script adds. A cross-site
form or image cannot add a header, and a cross-site script cannot either without a CORS preflight that this
server never grants; so no cookie exists for a forged request to ride on. State-changing requests must also
be JSON and, where the browser says where they come from (``Origin``, ``Sec-Fetch-Site``), same-origin.

Every place that checks the token goes through one :class:`TokenGate`: past ``failures_per_minute`` wrong
tokens from one client address, every token from there is refused (right or wrong) until the window has
passed, so no endpoint answers "is this the token?" faster than that.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

from edge_node.dashboard.limits import RateLimit

__all__ = ["CSP", "SECURITY_HEADERS", "TokenGate", "Verdict", "cross_site_reason", "new_token", "token_ok"]

Verdict = Literal["ok", "missing", "wrong", "blocked"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def new_token() -> str:
    """A per-run operator token when none is configured (printed once, in the URL fragment)."""
    return secrets.token_urlsafe(24)


def token_ok(expected: str | None, authorization: str | None) -> bool:
    """Constant-time check of ``Authorization: Bearer <token>``; no token configured means no access."""
    if expected is None or not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


class TokenGate:
    """The operator token, compared in constant time, with a limit on wrong tokens per client address."""

    def __init__(self, token: str | None, failures_per_minute: int) -> None:
        self._token = token
        self.failures = RateLimit(failures_per_minute)

    def check(self, authorization: str | None, client: str, now: float) -> Verdict:
        """``blocked`` while the client is over its limit, whatever it sends; a wrong token counts."""
        if self.failures.wait(client, now) > 0:
            return "blocked"
        if token_ok(self._token, authorization):
            return "ok"
        if not authorization:
            return "missing"
        self.failures.record(client, now)
        return "wrong"

    def wait(self, client: str, now: float) -> float:
        return self.failures.wait(client, now)


def cross_site_reason(method: str, headers: Mapping[str, str], scheme: str, host: str) -> str | None:
    """Why a state-changing request looks cross-site (None when it does not)."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return None
    if headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
        return "commands must be sent as application/json"
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
        return f"cross-origin request refused (Origin {origin} is not this dashboard, {scheme}://{host})"
    return None
