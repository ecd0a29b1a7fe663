"""Who can reach the dashboard, and what that requires: loopback or not, TLS, the Host names served, whether
watching needs the token. Decided once at start from the settings and the bind address.

- On a loopback bind only this machine can connect; viewing is open unless the settings close it.
- On any other bind the token would cross the network, so plain HTTP is refused unless
  ``EDGE_DASHBOARD__ALLOW_HTTP=true`` says otherwise, and viewing needs the token unless
  ``EDGE_DASHBOARD__VIEW_REQUIRES_TOKEN=false`` opens it.
- Whatever the bind, only known Host names are served. A web page the operator visits can make its own name
  resolve to 127.0.0.1 (DNS rebinding) and then read the dashboard as "same origin"; the Host header still
  carries that page's name, so it is refused. IP addresses are always served: rebinding needs a name.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass

from edge_node.config import DashboardConfig
from edge_node.errors import ConfigError

__all__ = ["Exposure", "exposure", "host_name", "is_loopback", "tls_context"]

_WILDCARDS = ("", "0.0.0.0", "::", "*")


def is_loopback(bind: str) -> bool:
    if bind.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def host_name(host: str | None) -> str | None:
    """The name in a Host header, without the port, lower case; None for an empty or malformed one."""
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 1 else None
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.rstrip(".") or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Exposure:
    loopback: bool
    view_needs_token: bool
    tls: bool
    hosts: frozenset[str]  # names served (IP addresses always are)

    def serves(self, host: str | None) -> bool:
        name = host_name(host)
        return name is not None and (name in self.hosts or _is_ip(name))


def exposure(cfg: DashboardConfig, bind: str, hostname: str) -> Exposure:
    """The policy for this bind; ConfigError when the bind would send the token over plain HTTP unasked."""
    loopback = is_loopback(bind)
    tls = cfg.tls_cert is not None
    if not loopback and not tls and not cfg.allow_http:
        raise ConfigError(
            f"refusing to serve the dashboard on {bind} over plain HTTP: the operator token would cross the network "
            "in clear text. Set EDGE_DASHBOARD__TLS_CERT and EDGE_DASHBOARD__TLS_KEY, or bind to 127.0.0.1 behind a "
            "TLS reverse proxy, or set EDGE_DASHBOARD__ALLOW_HTTP=true to accept plain HTTP on a trusted network"
        )
    view = cfg.view_requires_token if cfg.view_requires_token is not None else not loopback
    names = {"localhost", hostname.lower(), *(name.lower().rstrip(".") for name in cfg.allowed_hosts)}
    if bind.lower() not in _WILDCARDS and not _is_ip(bind):
        names.add(bind.lower().rstrip("."))
    return Exposure(loopback=loopback, view_needs_token=view, tls=tls, hosts=frozenset(names))


def tls_context(cfg: DashboardConfig) -> ssl.SSLContext | None:
    """The server's TLS context from EDGE_DASHBOARD__TLS_CERT/KEY (TLS 1.2 or later), or None for HTTP."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the dashboard's certificate {cfg.tls_cert} and key {cfg.tls_key}: {exc}; "
            "check EDGE_DASHBOARD__TLS_CERT and EDGE_DASHBOARD__TLS_KEY (PEM files)"
        ) from exc
    return context
