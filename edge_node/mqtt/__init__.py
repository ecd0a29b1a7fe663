"""MQTT for everything that talks to a broker: the node's long-lived ``Link``, one-shot ``connected`` clients for
the tools, the control router, TLS, and the embedded demo broker (amqtt, imported only when started).
"""

from edge_node.mqtt.broker import (
    EmbeddedBroker,
    pick_port,
)
from edge_node.mqtt.connect import (
    DEFAULT_HOST,
    aiomqtt_client,
    broker_host,
    connected,
    halt,
    paho_client,
    tls_context,
    tool_client_id,
)
from edge_node.mqtt.control import (
    ControlRouter,
    Parser,
    TokenBucket,
)
from edge_node.mqtt.link import (
    Inbound,
    Link,
    Outgoing,
)
from edge_node.mqtt.tls import (
    ssl_context,
)

__all__ = [
    "DEFAULT_HOST",
    "ControlRouter",
    "EmbeddedBroker",
    "Inbound",
    "Link",
    "Outgoing",
    "Parser",
    "TokenBucket",
    "aiomqtt_client",
    "broker_host",
    "connected",
    "halt",
    "paho_client",
    "pick_port",
    "ssl_context",
    "tls_context",
    "tool_client_id",
]
