"""MQTT for everything that talks to a broker: the node's long-lived ``Link``, one-shot ``connected`` clients for
the tools, the control router, the server list and failover order, TLS, and the embedded demo broker (amqtt).

The names below are imported on first use (PEP 562): the settings (``edge_node.config``) parse the server list
with ``mqtt.servers``, and ``mqtt.connect`` reads the settings, so an eager face would import itself in a circle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_node.mqtt.broker import EmbeddedBroker, pick_port
    from edge_node.mqtt.connect import (
        DEFAULT_HOST,
        aiomqtt_client,
        connected,
        describe,
        halt,
        paho_client,
        tls_context,
        tool_client_id,
    )
    from edge_node.mqtt.control import ControlRouter, Parser, TokenBucket
    from edge_node.mqtt.link import Inbound, Link, Outgoing
    from edge_node.mqtt.servers import Backoff, Server, ServerOrder, parse_servers
    from edge_node.mqtt.tls import ssl_context

__all__ = [
    "DEFAULT_HOST",
    "Backoff",
    "ControlRouter",
    "EmbeddedBroker",
    "Inbound",
    "Link",
    "Outgoing",
    "Parser",
    "Server",
    "ServerOrder",
    "TokenBucket",
    "aiomqtt_client",
    "connected",
    "describe",
    "halt",
    "paho_client",
    "parse_servers",
    "pick_port",
    "ssl_context",
    "tls_context",
    "tool_client_id",
]

_HOME = {
    "EmbeddedBroker": "broker",
    "pick_port": "broker",
    **dict.fromkeys(
        (
            "DEFAULT_HOST",
            "aiomqtt_client",
            "connected",
            "describe",
            "halt",
            "paho_client",
            "tls_context",
            "tool_client_id",
        ),
        "connect",
    ),
    **dict.fromkeys(("ControlRouter", "Parser", "TokenBucket"), "control"),
    **dict.fromkeys(("Inbound", "Link", "Outgoing"), "link"),
    **dict.fromkeys(("Backoff", "Server", "ServerOrder", "parse_servers"), "servers"),
    "ssl_context": "tls",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
