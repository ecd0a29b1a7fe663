"""Every MQTT topic string, built in one place."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FLEET", "Topics"]

FLEET = "all"  # the pseudo node id that addresses every node


@dataclass(frozen=True, slots=True)
class Topics:
    """Topics of one node under ``<prefix>/<node_id>/``."""

    prefix: str
    node_id: str

    def _t(self, leaf: str) -> str:
        return f"{self.prefix}/{self.node_id}/{leaf}"

    @property
    def predictions(self) -> str:
        return self._t("predictions")

    @property
    def heartbeat(self) -> str:
        return self._t("heartbeat")

    @property
    def status(self) -> str:
        return self._t("status")

    @property
    def state(self) -> str:
        return self._t("state")

    @property
    def events(self) -> str:
        return self._t("events")

    @property
    def detections(self) -> str:
        """Watch rules' ``start`` and ``end`` records (QoS 1, docs/detections.md)."""
        return self._t("detections")

    def detection_snapshot(self, ident: str) -> str:
        """A JPEG (raw bytes) of detection ``ident``'s best frame in its first second, when snapshots are enabled."""
        return self._t(f"detections/snapshot/{ident}")

    @property
    def ota(self) -> str:
        return self._t("ota")

    @property
    def snapshot(self) -> str:
        """A JPEG (raw bytes, not JSON) of the latest frame, sent in answer to a ``snapshot`` command."""
        return self._t("snapshot")

    @property
    def control(self) -> str:
        return self._t("control")

    @property
    def fleet_control(self) -> str:
        return f"{self.prefix}/{FLEET}/control"

    @property
    def ha_mode(self) -> str:
        """Home Assistant's resolution select writes a bare mode name here (docs/security.md).

        Home Assistant gets this topic instead of ``control`` so that its identity can be allowed to change a
        node's mode and nothing else. There is deliberately no fleet-wide (``all``) variant.
        """
        return self._t("ha/mode")

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The command topics a node always subscribes to (``ha_mode`` is added with Home Assistant)."""
        return (self.control, self.fleet_control)

    # Fleet-wide wildcards, for dashboards and the operator CLI.
    @staticmethod
    def wildcard(prefix: str, leaf: str) -> str:
        return f"{prefix}/+/{leaf}"

    @staticmethod
    def control_for(prefix: str, target: str) -> str:
        """Control topic of one node, or of the fleet when ``target`` is ``all``."""
        return f"{prefix}/{target}/control"

    @staticmethod
    def parse(prefix: str, topic: str) -> tuple[str, str] | None:
        """Split ``<prefix>/<node>/<leaf>`` into (node, leaf); None for foreign topics."""
        head = prefix + "/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :].split("/")
        if len(rest) != 2 or not rest[0] or not rest[1]:
            return None
        return rest[0], rest[1]
