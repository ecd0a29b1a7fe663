"""Test helpers: run ``edge-node run`` as a real process, and watch a broker like a dashboard would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.paths import clean_env

__all__ = ["Collector", "NodeProcess", "Received", "answer_to"]


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Collector:
    """Subscribes to ``topics`` and keeps every message; ``wait`` blocks until a matching one arrives."""

    def __init__(
        self,
        port: int,
        topics: tuple[str, ...] = ("#",),
        host: str = "127.0.0.1",
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-collector-{os.getpid()}-{id(self)}")
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_message = self._on_message
        self._topics = topics
        self._client.on_connect = self._on_connect
        self._client.connect(host, port, keepalive=10)
        self._client.loop_start()

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        for topic in self._topics:
            client.subscribe(topic, qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        self._client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def on(self, topic: str, since: float = 0.0) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic and m.at >= since]

    def wait(
        self,
        topic: str,
        pred: Callable[[Received], bool] = lambda m: True,
        *,
        timeout: float = 20.0,
        since: float = 0.0,
    ) -> Received:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if m.topic == topic and m.at >= since and pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({m.topic for m in self.messages})
                    raise AssertionError(f"no matching message on {topic} within {timeout}s; topics seen: {seen}")
                self._cond.wait(left)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def answer_to(ident: str) -> Callable[[Received], bool]:
    """Matches the event that answers the command ``ident`` (for ``Collector.wait`` on an events topic)."""
    return lambda m: json.loads(m.payload).get("id") == ident


@dataclass
class NodeProcess:
    """``python -m edge_node run`` with EDGE_* settings; output goes to a log file for failure messages."""

    env: dict[str, str]
    workdir: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    prefix: list[str] = field(default_factory=list)  # runs the node through this, e.g. ``ip netns exec <name>``

    @property
    def log_path(self) -> Path:
        return self.workdir / "node.log"

    def start(self) -> NodeProcess:
        env = clean_env(**self.env)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "edge_node", "run", *self.args],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"node did not stop on SIGTERM within {timeout}s\n{self.log()[-3000:]}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        """Resident memory of the node process now (VmRSS), in MiB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc status")
