"""The broker identities that are not nodes, and the names a node may therefore never take.

With the shipped mosquitto config (deploy/mosquitto/) a client's certificate Common Name is its MQTT username
*and* its client id, and the ACL gives every name the rights of a node called that name unless the name is
one of these. A node named ``operator`` would get the operator's key from the Ansible PKI; a node named
``all`` would read the fleet's commands as its own. docs/security.md explains each identity.
"""

from __future__ import annotations

from edge_node.wire.topics import FLEET

__all__ = ["HOME_ASSISTANT", "OPERATORS", "RECORDERS", "RESERVED_NODE_IDS", "VIEWERS", "reserved_reason"]

# May send commands (write <prefix>/+/control) and read the fleet: people running `edge-node ctl`, the
# canary rollout (deploy/ansible/models.yml), the web dashboard (it relays the commands of token holders).
OPERATORS = ("operator", "rollout", "dashboard")
# Read-only: `edge-node monitor`, Grafana, Node-RED.
VIEWERS = ("viewer",)
# Home Assistant: reads the fleet and discovery, sends the mode select's set_mode commands.
HOME_ASSISTANT = ("homeassistant",)
# The history recorder (`edge-node record`): reads the nodes' telemetry, writes only its own heartbeat.
RECORDERS = ("recorder",)

RESERVED_NODE_IDS = frozenset({FLEET, *OPERATORS, *VIEWERS, *HOME_ASSISTANT, *RECORDERS})


def reserved_reason(node_id: str) -> str | None:
    """Why ``node_id`` cannot name a node, or None when it can (case-insensitive: certificate CNs are not)."""
    name = node_id.lower()
    if name == FLEET:
        return f"'{FLEET}' addresses every node in commands"
    if name in RESERVED_NODE_IDS:
        return f"'{name}' is the broker identity of a tool, not a node (docs/security.md)"
    return None
