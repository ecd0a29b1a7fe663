"""A paho MQTT 5 client over the node's own TLS context that records what the broker did: messages, PUBACK
reason codes, disconnects. Tests assert on those instead of on time passing."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_node.config import MqttConfig
from edge_node.mqtt import ssl_context

__all__ = ["DENIED", "OK", "Client"]

OK, DENIED = "ok", "Not authorized"


class Client:
    """A paho client (MQTT 5, or 3.1.1 with ``protocol``) over the node's own TLS context
    (edge_node.mqtt.tls.ssl_context).

    It records messages, PUBACK reason codes and every disconnect, so tests can assert on what the broker did
    rather than on time passing.
    """

    def __init__(
        self,
        port: int,
        cfg: MqttConfig,
        client_id: str,
        will: tuple[str, bytes] | None = None,
        *,
        protocol: MQTTProtocolVersion = paho.MQTTv5,
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects: list[str] = []
        self.connected = threading.Event()
        self.settled = threading.Event()  # connected, refused or dropped
        self.refused: str | None = None
        self._cond = threading.Condition()
        self._acks: dict[int, ReasonCode] = {}
        self._subacks: set[int] = set()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        ctx = ssl_context(cfg)
        assert ctx is not None
        self.c.tls_set_context(ctx)
        if will is not None:
            self.c.will_set(will[0], will[1], qos=1, retain=True)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = self._on_subscribe
        try:
            self.c.connect("localhost", port, keepalive=10)
        except (ssl.SSLError, OSError) as exc:
            self.refused = repr(exc)
            self.settled.set()
            return
        self.c.loop_start()

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object = None) -> None:
        if not rc.is_failure:
            self.connected.set()
        else:
            self.refused = str(rc)
        self.settled.set()

    def _on_disconnect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object = None) -> None:
        with self._cond:
            self.disconnects.append(str(rc))
            self._cond.notify_all()
        self.settled.set()

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self._cond:
            self._acks[mid] = rc
            self._cond.notify_all()

    def _on_subscribe(self, _c: object, _u: object, mid: int, _rcs: object, _p: object) -> None:
        with self._cond:
            self._subacks.add(mid)
            self._cond.notify_all()

    def _until(self, done: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(done, timeout)

    def subscribe(self, topic: str) -> None:
        result, mid = self.c.subscribe(topic, qos=1)
        assert result == paho.MQTT_ERR_SUCCESS
        assert self._until(lambda: mid in self._subacks, 10), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> str:
        """Publish at QoS 1 and return the broker's answer: OK or the PUBACK's failure ("Not authorized")."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        assert self._until(lambda: info.mid in self._acks, 10), f"no PUBACK for {topic}"
        rc = self._acks[info.mid]
        return str(rc) if rc.is_failure else OK

    def got(self, topic: str, payload: bytes | None = None, timeout: float = 10.0) -> bool:
        def seen() -> bool:
            return any(t == topic and (payload is None or p == payload) for t, p in self.messages)

        return self._until(seen, timeout)

    def on(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
