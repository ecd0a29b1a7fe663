"""The one TLS client context for MQTT: the node, ``ctl``, ``monitor`` and ``simulate`` all use it.

TLS 1.2 or newer, the broker's certificate checked against ``ca_file`` (or the system CAs) including its
host name unless ``tls_insecure``, and a client certificate for mutual TLS when ``cert_file`` is set.
Missing or unreadable files become a ConfigError that names the setting to fix.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from edge_node.config import MqttConfig
from edge_node.errors import ConfigError

__all__ = ["ssl_context"]

log = logging.getLogger(__name__)


def _require_file(path: Path, setting: str) -> str:
    if not path.is_file():
        raise ConfigError(f"{setting}={path}: no such file; point it at a PEM file or unset it")
    return str(path)


def ssl_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    """A client SSLContext for ``cfg``, or None when the connection is plain TCP."""
    if not cfg.uses_tls:
        return None
    cafile = _require_file(cfg.ca_file, "EDGE_MQTT__CA_FILE") if cfg.ca_file is not None else None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"EDGE_MQTT__CA_FILE={cfg.ca_file} is not a usable PEM CA certificate: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.cert_file is not None and cfg.key_file is not None:
        cert = _require_file(cfg.cert_file, "EDGE_MQTT__CERT_FILE")
        key = _require_file(cfg.key_file, "EDGE_MQTT__KEY_FILE")
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the client certificate {cfg.cert_file} with key {cfg.key_file}: {exc}; "
                "check that both are PEM and that the key belongs to the certificate"
            ) from exc
    if cfg.tls_insecure:
        log.warning("EDGE_MQTT__TLS_INSECURE is set: the broker's host name is not checked (lab use only)")
        ctx.check_hostname = False
    return ctx
