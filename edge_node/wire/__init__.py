"""The wire contract: every topic string, every payload model, and the vocabulary they share.

Everything that talks MQTT (the node, ``ctl``, ``monitor``, ``simulate``, the dashboard) imports from here;
nothing in it imports the node, capture or vision.
"""

from edge_node.wire.domain import (
    Mode,
    PublishPolicy,
)
from edge_node.wire.identities import (
    HOME_ASSISTANT,
    OPERATORS,
    RESERVED_NODE_IDS,
    VIEWERS,
    reserved_reason,
)
from edge_node.wire.messages import (
    OFFLINE,
    ONLINE,
    Camera,
    ClassScore,
    Command,
    DeviceChoice,
    Event,
    Heartbeat,
    LatencyMs,
    ModelRef,
    NodeState,
    OtaPhase,
    OtaStatus,
    Ping,
    PipelineState,
    Prediction,
    ReferenceCheck,
    Rollback,
    SetMode,
    SetPublish,
    Snapshot,
    Trial,
    UpdateModel,
    WorkerStatus,
    command_id,
    parse_command,
    parse_mode_select,
)
from edge_node.wire.topics import (
    FLEET,
    Topics,
)

__all__ = [
    "FLEET",
    "HOME_ASSISTANT",
    "OFFLINE",
    "ONLINE",
    "OPERATORS",
    "RESERVED_NODE_IDS",
    "VIEWERS",
    "Camera",
    "ClassScore",
    "Command",
    "DeviceChoice",
    "Event",
    "Heartbeat",
    "LatencyMs",
    "Mode",
    "ModelRef",
    "NodeState",
    "OtaPhase",
    "OtaStatus",
    "Ping",
    "PipelineState",
    "Prediction",
    "PublishPolicy",
    "ReferenceCheck",
    "Rollback",
    "SetMode",
    "SetPublish",
    "Snapshot",
    "Topics",
    "Trial",
    "UpdateModel",
    "WorkerStatus",
    "command_id",
    "parse_command",
    "parse_mode_select",
    "reserved_reason",
]
