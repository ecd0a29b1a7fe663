"""systemd integration of the real node: READY after the first inference, and watchdog pings that stop only
when the node's own restarts no longer help. NOTIFY_SOCKET is a datagram socket this test binds and reads."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path

import pytest

from tests.support.nodeproc import Collector, NodeProcess

pytestmark = pytest.mark.slow


def test_a_frozen_camera_is_restarted_by_the_node_and_left_to_systemd_only_when_that_keeps_failing(
    node_env: dict[str, str], tmp_path: Path
) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    env = dict(node_env)
    env.update(
        NOTIFY_SOCKET=str(sock_path),
        WATCHDOG_USEC="600000",  # pings every 0.3 s
        EDGE_CAMERA__SOURCE="synthetic:stall_after=60",  # 2 s of frames at 30 fps, then frozen (every time)
        EDGE_CAMERA__STALL_TIMEOUT="1",
        EDGE_SUPERVISOR__MAX_RESTARTS="2",
    )
    bus = Collector(int(env["EDGE_MQTT__PORT"]), ("ghostpi/node-t/events",))
    node = NodeProcess(env, tmp_path / "node").start()
    got: list[tuple[float, str]] = []
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                got.extend((time.monotonic(), line) for line in sock.recv(4096).decode().splitlines())
            pings = [t for t, line in got if line == "WATCHDOG=1"]
            if pings and time.monotonic() - pings[-1] > 3.0:
                break  # pings have stopped for 3 s
        assert node.alive(), node.log()[-2000:]  # systemd, not the node, decides to restart it
    finally:
        node.terminate()
        sock.close()
        bus.close()
    causes = [json.loads(m.payload)["cmd"] for m in bus.on("ghostpi/node-t/events")]
    lines = [line for _, line in got]
    assert "READY=1" in lines, f"no READY=1; got {lines[:10]}\n{node.log()[-2000:]}"
    pings = [t for t, line in got if line == "WATCHDOG=1"]
    ready_at = next(t for t, line in got if line == "READY=1")
    assert len(pings) >= 3, "the watchdog was pinged while frames flowed"
    assert all(t >= ready_at - 0.5 for t in pings[:1])
    # The node restarted the camera itself (twice, each time it froze again); then it gave up and the pings stopped.
    assert causes.count("camera_restarted") == 2, causes
    assert causes.index("camera_stalled") < causes.index("camera_restarted") < causes.index("camera_failed"), causes
    assert "camera_recovered" in causes, causes
    assert time.monotonic() - pings[-1] > 3.0
    assert pings[-1] - ready_at > 6.0, "pings stopped before the node's own restarts were used up"
