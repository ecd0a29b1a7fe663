"""MQTT clients built from ``MqttConfig`` (``EDGE_MQTT__*``), shared by the node and every operator tool.

The node, ``ctl`` and ``simulate`` use aiomqtt (:func:`aiomqtt_client`, :func:`connected`); ``monitor`` uses a bare
paho client (:func:`paho_client`) because its per-message path must stay minimal. Both get the same TLS
context and credentials, so one environment works for the node and for every tool.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.enums import CallbackAPIVersion

from edge_node.config import MqttConfig
from edge_node.errors import MqttError
from edge_node.mqtt.servers import ServerOrder
from edge_node.mqtt.tls import ssl_context

__all__ = [
    "DEFAULT_HOST",
    "aiomqtt_client",
    "connected",
    "describe",
    "halt",
    "paho_client",
    "tls_context",
    "tool_client_id",
]

log = logging.getLogger(__name__)

SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: another connection with our client id
DEFAULT_HOST = "localhost"  # where the node's embedded demo broker listens when EDGE_MQTT__HOST is unset


def describe(cfg: MqttConfig) -> str:
    """The servers for messages: ``host:port``, or the list."""
    return ",".join(str(server) for server in cfg.servers(DEFAULT_HOST))


def tool_client_id(tool: str) -> str:
    """A unique client id per tool run, so two tool runs never kick each other off an open broker.

    A broker that binds client ids to certificates (deploy/mosquitto/) replaces it with the certificate's name.
    """
    return f"ghostpi-{tool}-{uuid.uuid4().hex[:10]}"


def tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    """The project's one TLS client context (:func:`edge_node.mqtt.tls.ssl_context`), kept here for callers."""
    return ssl_context(cfg)


def _protocol(cfg: MqttConfig) -> aiomqtt.ProtocolVersion:
    return aiomqtt.ProtocolVersion.V5 if cfg.protocol == "5" else aiomqtt.ProtocolVersion.V311


def aiomqtt_client(
    cfg: MqttConfig,
    *,
    identifier: str | None = None,
    will: aiomqtt.Will | None = None,
    keepalive: int | None = None,
    max_queued_incoming_messages: int | None = None,
) -> aiomqtt.Client:
    """An unconnected aiomqtt client for the first server of ``cfg`` (pass ``cfg.for_server(s)`` for another);
    enter it with ``async with``, or use :func:`connected`, which fails over along the list."""
    ctx = tls_context(cfg)
    server = cfg.servers(DEFAULT_HOST)[0]
    return aiomqtt.Client(
        server.host,
        server.port,
        username=cfg.username,
        password=cfg.resolved_password(),
        identifier=identifier or cfg.client_id or tool_client_id("tool"),
        protocol=_protocol(cfg),
        will=will,
        keepalive=keepalive if keepalive is not None else cfg.keepalive,
        timeout=cfg.connect_timeout,
        tls_context=ctx,
        tls_insecure=True if ctx is not None and cfg.tls_insecure else None,
        max_queued_incoming_messages=max_queued_incoming_messages,
    )


@asynccontextmanager
async def connected(
    cfg: MqttConfig,
    *,
    identifier: str | None = None,
    will: aiomqtt.Will | None = None,
    keepalive: int | None = None,
) -> AsyncIterator[aiomqtt.Client]:
    """A client connected to the first server of the list that answers (from a random start); broker failures
    surface as :class:`~edge_node.errors.MqttError`."""
    order = ServerOrder(cfg.servers(DEFAULT_HOST))
    failure: aiomqtt.MqttError | None = None
    for _ in order.servers:
        one = cfg.for_server(order.current)
        client = aiomqtt_client(one, identifier=identifier, will=will, keepalive=keepalive)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            failure = exc
            log.info("MQTT server %s did not take the connection (%s)", order.current, exc)
            order.advance()
            continue
        try:
            try:
                yield client
            finally:
                await client.__aexit__(None, None, None)
        except aiomqtt.MqttError as exc:
            raise _explained(one, exc) from exc
        return
    assert failure is not None
    raise _explained(cfg, failure) from failure


def _explained(cfg: MqttConfig, exc: aiomqtt.MqttError) -> MqttError:
    where = describe(cfg)
    if _taken_over(exc):
        return MqttError(
            f"MQTT broker {where} dropped this connection because another client connected with the same client "
            f"id. {_SHARED_IDENTITY}"
        )
    hint = "check EDGE_MQTT__HOST (or EDGE_MQTT__HOSTS), EDGE_MQTT__PORT, credentials and TLS settings"
    if cfg.cert_file is not None and _dropped(exc):
        hint = f"if another program is connected with the same certificate, that is why. {_SHARED_IDENTITY}"
    return MqttError(f"MQTT broker {where}: {exc}; {hint}")


_SHARED_IDENTITY = (
    "A broker set up like deploy/mosquitto/ uses the certificate's name as the client id, so two programs that "
    "share a certificate push each other off: each program that runs at the same time needs its own identity "
    "(docs/security.md)"
)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__


def _taken_over(exc: BaseException) -> bool:
    """True when the broker said (MQTT 5 reason code 0x8E) that a newer connection took over our session."""
    return any(getattr(getattr(e, "rc", None), "value", None) == SESSION_TAKEN_OVER for e in _chain(exc))


def _dropped(exc: BaseException) -> bool:
    """True when the broker closed an established connection (mosquitto 2.0.11 closes a taken-over session
    without saying why)."""
    return any(isinstance(e, aiomqtt.MqttCodeError) and not isinstance(e, MqttConnectError) for e in _chain(exc))


def paho_client(cfg: MqttConfig, *, identifier: str | None = None) -> paho.Client:
    """A configured, unconnected paho client (VERSION2 callbacks); the caller connects and runs its loop."""
    v5 = cfg.protocol == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=identifier or cfg.client_id or tool_client_id("tool"),
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else True,
    )
    password = cfg.resolved_password()
    if cfg.username is not None or password is not None:
        client.username_pw_set(cfg.username, password)
    ctx = tls_context(cfg)
    if ctx is not None:
        client.tls_set_context(ctx)
        if cfg.tls_insecure:
            client.tls_insecure_set(True)
    client.reconnect_delay_set(max(1, int(cfg.reconnect_min)), max(1, int(cfg.reconnect_max)))
    return client


async def halt(task: asyncio.Task[Any]) -> None:
    """Cancel until the task is done: Python 3.11's ``wait_for`` (inside aiomqtt's publish) can swallow a
    cancellation that races with its inner future, so a single ``cancel()`` is not always enough."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
