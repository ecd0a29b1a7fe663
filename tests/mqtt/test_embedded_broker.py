"""With no broker configured the node starts its own (amqtt) and echoes what a subscriber receives."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.slow


def test_embedded_broker_moves_off_a_taken_port_and_echoes_predictions(tiny_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("amqtt")
    with socket.socket() as taken:  # something already listens on the configured port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "PYTHONPATH": str(REPO),
            "EDGE_NODE_ID": "node-e",
            "EDGE_MQTT__PORT": str(port),
            "EDGE_CAMERA__SOURCE": "synthetic",
            "EDGE_MODEL__BUNDLE": str(tiny_bundle),
            "EDGE_STATE_DIR": str(tmp_path / "state"),
        }
        out = subprocess.run(
            [sys.executable, "-m", "edge_node", "run", "--duration", "6"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"port {port} is taken" in out.stderr
    assert "Embedded MQTT broker on 127.0.0.1:" in out.stderr
    assert f"127.0.0.1:{port} " not in out.stderr.split("Embedded MQTT broker on")[1].splitlines()[0]
    assert "ghostpi/node-e/predictions #" in out.stdout, out.stdout[-2000:]
    assert '"label": "class_' in out.stdout  # the first payload is printed in full
