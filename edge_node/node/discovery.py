"""Home Assistant discovery for the running node: the retained discovery message on every connect, and again
(after a random delay) whenever Home Assistant announces that it came online."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from edge_node import __version__
from edge_node.config import HaConfig

__all__ = ["HaDiscovery"]

log = logging.getLogger(__name__)


class HaDiscovery:
    def __init__(
        self,
        cfg: HaConfig,
        *,
        prefix: str,
        node_id: str,
        model_name: Callable[[], str],
        publish: Callable[[str, bytes], None],
        rules: Callable[[], Sequence[str]] = lambda: (),
    ) -> None:
        from edge_node.node.hass import ha_status_topic

        self.cfg = cfg
        self.prefix = prefix
        self.node_id = node_id
        self._model_name = model_name
        self._publish = publish
        self._rules = rules  # the watch rules' names: an event entity each
        self.status_topic = ha_status_topic(cfg.discovery_prefix)

    def announce(self) -> None:
        """Publish the (retained) discovery message."""
        from edge_node.node.hass import discovery_message

        topic, payload = discovery_message(
            self.prefix,
            self.node_id,
            discovery_prefix=self.cfg.discovery_prefix,
            sw_version=__version__,
            model_name=self._model_name(),
            rules=self._rules(),
        )
        self._publish(topic, payload)

    def on_status(self, payload: bytes) -> None:
        """Home Assistant's birth message: announce again, spread over a few seconds across the fleet."""
        from edge_node.node.hass import rediscovery_delay

        delay = rediscovery_delay(payload)
        if delay is None:
            return
        log.info("Home Assistant came online: re-sending discovery in %.1fs", delay)
        asyncio.get_running_loop().call_later(delay, self.announce)
