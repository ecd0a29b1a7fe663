"""``edge-node notify`` as a real process: real mosquitto, a real command, a real webhook on loopback."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge_node.fleet.notify import NotifyGate
from edge_node.wire import Detection
from tests.support.brokers import Mosquitto
from tests.support.nodeproc import Collector
from tests.support.paths import clean_env

pytestmark = pytest.mark.timeout(90)


def _det(node: str, rule: str, event: str, n: int) -> Detection:
    end = {"ended": 2.0, "duration_s": 1.0, "mean_confidence": 0.5, "reason": "gap"} if event == "end" else {}
    return Detection.model_validate(
        {"node": node, "rule": rule, "event": event, "id": f"{rule}-{n}", "ts": 1.0, "started": 1.0, "label": "tabby",
         "frames": 3, "peak_confidence": 0.9, "best_ts": 1.0, **end}
    )  # fmt: skip


def test_the_gate_filters_and_rate_limits_per_node_and_rule() -> None:
    gate = NotifyGate(min_interval=10.0)
    assert gate.allow(_det("a", "cat", "start", 1), 0.0)
    assert not gate.allow(_det("a", "cat", "end", 1), 1.0)  # starts only
    assert not gate.allow(_det("a", "cat", "start", 2), 5.0)  # within 10 s of the last for a/cat
    assert gate.allow(_det("b", "cat", "start", 3), 5.0) and gate.allow(_det("a", "dog", "start", 4), 5.0)
    assert gate.allow(_det("a", "cat", "start", 5), 10.0) and gate.limited == 1
    only = NotifyGate(events=frozenset({"start", "end"}), rules=frozenset({"dog"}), min_interval=0.0)
    assert not only.allow(_det("a", "cat", "start", 6), 0.0) and only.allow(_det("a", "dog", "end", 7), 0.0)


class _Hook(BaseHTTPRequestHandler):
    bodies: list[bytes] = []
    arrived = threading.Condition()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.arrived:
            self.bodies.append(body)
            self.arrived.notify_all()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()


def test_notify_runs_the_command_and_posts_the_webhook_within_the_rate_limit(
    mosquitto: Mosquitto, hook: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    env = clean_env(EDGE_MQTT__HOST="127.0.0.1", EDGE_MQTT__PORT=str(mosquitto.port), EDGE_TOPIC_PREFIX="t")
    args = ["notify", "--webhook", hook, "--min-interval", "60", "--duration", "60", "--exec", "sh", "-c"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_node", *args, f'cat >> {out}; echo "$GHOSTPI_RULE" >> {out}.rules'],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    bus = Collector(mosquitto.port)
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().startswith("following t/+/detections")
        for d in [_det("n1", "cat", "start", 1), _det("n1", "cat", "end", 1), _det("n1", "cat", "start", 2)]:
            bus.publish("t/n1/detections", d.to_bytes())
        bus.publish("t/n1/detections", b"not a detection")
        bus.publish("t/n2/detections", _det("n2", "dog", "start", 3).to_bytes())
        deadline = time.monotonic() + 30
        with _Hook.arrived:
            while len(_Hook.bodies) < 2:
                assert _Hook.arrived.wait(max(0.0, deadline - time.monotonic())), _Hook.bodies
        assert sorted(Detection.model_validate_json(b).id for b in _Hook.bodies) == ["cat-1", "dog-3"]
        lines = out.read_text().splitlines()
        assert sorted(Detection.model_validate_json(line).id for line in lines) == ["cat-1", "dog-3"]
        assert sorted((tmp_path / "out.jsonl.rules").read_text().split()) == ["cat", "dog"]
    finally:
        bus.close()
        proc.terminate()
        proc.wait(10)
