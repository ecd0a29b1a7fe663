"""OTA end to end: the real ``edge-node run`` process, a real mosquitto, a real HTTP server, ``edge-node ctl``,
and kill -9 at the worst moments followed by a restart that must come up on a valid bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.bundle.archive import pack
from edge_node.messages import Event, Heartbeat, OtaStatus, Prediction
from edge_node.ota.download import sha256_file
from tests.support.brokers import Mosquitto
from tests.support.bundles import make_key, make_tiny_bundle
from tests.support.nodeproc import Collector, NodeProcess, answer_to
from tests.support.ota_http import FaultServer, serving
from tests.support.paths import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

T = "ghostpi/node-o"
RES = (64, 48)


World = tuple[dict[str, str], Collector, FaultServer, Path, Path]


@pytest.fixture
def world(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[World]:
    """(node env, bus, http server, site folder, signing key)."""
    key = tmp_path / "keys" / "release.pem"
    pub = make_key(key)
    factory = make_tiny_bundle(tmp_path / "factory", version="1.0.0", resolutions=RES, key=key)
    env = {
        "EDGE_NODE_ID": "node-o",
        "EDGE_MQTT__HOST": "127.0.0.1",
        "EDGE_MQTT__PORT": str(mosquitto.port),
        "EDGE_MQTT__KEEPALIVE": "5",
        "EDGE_CAMERA__SOURCE": "synthetic",
        "EDGE_CAMERA__FPS": "30",
        "EDGE_MODEL__BUNDLE": str(factory),
        "EDGE_MODEL__THREADS": "1",
        "EDGE_HEARTBEAT__INTERVAL": "1",
        "EDGE_STATE_DIR": str(tmp_path / "state"),
        "EDGE_OTA__TRUSTED_KEYS": str(pub),
        "EDGE_OTA__ALLOW_HTTP": "true",
        "EDGE_OTA__DOWNLOAD_TIMEOUT": "2",
        "EDGE_OTA__HEALTH_FRAMES": "60",
        "EDGE_OTA__HEALTH_MAX_LATENCY_MS": "200",
    }
    site = tmp_path / "site"
    site.mkdir()
    bus = Collector(mosquitto.port, (f"{T}/#",))
    with serving(site, faults=True) as srv:
        try:
            yield env, bus, srv, site, key
        finally:
            bus.close()


def _release(site: Path, tmp: Path, key: Path, version: str, pad: int = 0) -> tuple[str, str]:
    """Pack a signed bundle into the site; ``pad`` adds a listed file of random bytes so the download takes a while."""
    extra = {"padding.bin": os.urandom(pad)} if pad else None
    bundle = make_tiny_bundle(tmp / f"b-{version}", version=version, resolutions=RES, key=key, extra=extra)
    archive = pack(bundle, site / f"tiny-{version}.tar.gz")
    return archive.name, sha256_file(archive)


def _start(env: dict[str, str], tmp: Path, bus: Collector, version: str, since: float = 0.0) -> NodeProcess:
    node = NodeProcess(env, tmp / "node").start()
    _serving(bus, node, version, since)
    return node


def _serving(bus: Collector, node: NodeProcess, version: str, since: float = 0.0) -> Prediction:
    try:
        m = bus.wait(
            f"{T}/predictions",
            lambda m: Prediction.model_validate_json(m.payload).model.version == version,
            since=since,
            timeout=40,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- node log ---\n{node.log()[-4000:]}") from None
    return Prediction.model_validate_json(m.payload)


def _heartbeat(bus: Collector, since: float) -> Heartbeat:
    return Heartbeat.model_validate_json(bus.wait(f"{T}/heartbeat", since=since).payload)


def _ctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {**env, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "edge_node", "ctl", "node-o", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=90,
    )


def _publish_update(bus: Collector, srv: FaultServer, name: str, sha: str, version: str, ident: str) -> None:
    cmd = {"cmd": "update_model", "id": ident, "url": f"{srv.url}/{name}", "sha256": sha, "version": version}
    bus.publish(f"{T}/control", json.dumps(cmd))


def test_update_and_rollback_through_ctl(world: World, tmp_path: Path) -> None:
    env, bus, srv, site, key = world
    name, sha = _release(site, tmp_path, key, "2.0.0")
    node = _start(env, tmp_path, bus, "1.0.0")
    try:
        out = _ctl(env, "update-model", f"{srv.url}/{name}", "--sha256", sha, "--version", "2.0.0", "--timeout", "60")
        assert out.returncode == 0, out.stdout + out.stderr + node.log()[-3000:]
        assert out.stdout.startswith("node-o: ok update_model version=2.0.0 previous=1.0.0")
        assert "node-o: activating 2.0.0" in out.stderr  # phases streamed from the retained ota topic
        ota = OtaStatus.model_validate_json(bus.wait(f"{T}/ota", lambda m: m.json()["version"] == "2.0.0").payload)
        assert ota.version == "2.0.0"
        _serving(bus, node, "2.0.0")
        assert _heartbeat(bus, bus.messages[-1].at).model_source == "active"
        assert _retained_state_version(env) == "2.0.0"  # the retained state follows every swap

        out = _ctl(env, "rollback")
        assert out.returncode == 0 and out.stdout.startswith("node-o: ok rollback version=1.0.0 from=2.0.0"), out
        _serving(bus, node, "1.0.0", since=bus.messages[-1].at)
        assert _retained_state_version(env) == "1.0.0"
    finally:
        node.terminate()


def _retained_state_version(env: dict[str, str]) -> str:
    """What a dashboard that connects now reads from the retained state topic."""
    fresh = Collector(int(env["EDGE_MQTT__PORT"]), (f"{T}/state",))
    try:
        return str(fresh.wait(f"{T}/state", lambda m: m.retain, timeout=10).json()["model"]["version"])
    finally:
        fresh.close()


@pytest.mark.parametrize("phase", ["downloading", "activating"])
def test_sigterm_during_an_update_exits_promptly_and_leaves_the_store_consistent(
    world: World, tmp_path: Path, phase: str
) -> None:
    """The update task used to live outside the node's TaskGroup, so SIGTERM during a download waited on a thread
    that nothing could cancel. Now it is interrupted, answered, and the node exits within 5 s."""
    env, bus, srv, site, key = world
    name, sha = _release(site, tmp_path, key, "2.0.0", pad=2_000_000)
    if phase == "downloading":
        srv.faults = ["stall"]
        srv.stall_seconds = 60
    else:
        env = {**env, "EDGE_OTA__HEALTH_FRAMES": "100000", "EDGE_OTA__HEALTH_TIMEOUT": "600"}  # a long health watch
    node = _start(env, tmp_path, bus, "1.0.0")
    _publish_update(bus, srv, name, sha, "2.0.0", "s1")
    if phase == "downloading":
        bus.wait(f"{T}/ota", lambda m: m.json()["phase"] == "downloading" and m.json().get("progress", 0) > 0)
    else:
        _serving(bus, node, "2.0.0")  # swapped in, watching its health
    assert node.proc is not None
    start = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    rc = node.proc.wait(15)
    took = time.monotonic() - start
    assert rc == 0 and took < 5.0, f"exit {rc} after {took:.1f}s\n{node.log()[-3000:]}"
    ev = bus.wait(f"{T}/events", lambda m: m.json().get("id") == "s1", timeout=5).json()
    assert not ev["ok"], ev
    state = json.loads((tmp_path / "state" / "ota" / "state.json").read_text())
    assert state["active"] is None and state["pending"] is None  # still the factory bundle, nothing half-done
    staging = {p.name for p in (tmp_path / "state" / "ota" / "staging").iterdir()}
    assert all(n.endswith(".part") for n in staging), staging  # only a resumable partial download may stay
    restarted = time.monotonic()
    node = _start(env, tmp_path, bus, "1.0.0", since=restarted)
    node.terminate()


def test_after_a_fallback_from_a_corrupt_bundle_rollback_still_works(world: World, tmp_path: Path) -> None:
    env, bus, srv, site, key = world
    node = _start(env, tmp_path, bus, "1.0.0")
    for version in ("2.0.0", "3.0.0"):
        name, sha = _release(site, tmp_path, key, version)
        _publish_update(bus, srv, name, sha, version, f"u{version}")
        assert bus.wait(f"{T}/events", answer_to(f"u{version}"), timeout=40).json()["ok"]
    node.terminate()
    bundles = tmp_path / "state" / "ota" / "bundles"
    active = next(p for p in bundles.iterdir() if p.name.startswith("3.0.0-"))
    (active / "labels.txt").write_text("tampered\n")  # the active bundle no longer matches its hashes

    restarted = time.monotonic()
    node = _start(env, tmp_path, bus, "2.0.0", since=restarted)  # falls back to the previous bundle
    try:
        fallback = bus.wait(f"{T}/events", lambda m: m.json()["cmd"] == "model_fallback", since=restarted).json()
        assert "3.0.0" in fallback["error"]
        state = json.loads((tmp_path / "state" / "ota" / "state.json").read_text())
        assert state["active"].startswith("2.0.0-") and state["previous"] == "@factory"
        out = _ctl(env, "rollback")
        assert out.returncode == 0 and "version=1.0.0 from=2.0.0" in out.stdout, out.stdout + out.stderr
        _serving(bus, node, "1.0.0", since=time.monotonic())
    finally:
        node.terminate()


def test_kill9_during_download_restarts_on_the_last_good_bundle_then_resumes(world: World, tmp_path: Path) -> None:
    env, bus, srv, site, key = world
    name, sha = _release(site, tmp_path, key, "2.0.0", pad=2_000_000)
    srv.faults = ["stall"]
    srv.stall_seconds = 30
    node = _start(env, tmp_path, bus, "1.0.0")
    _publish_update(bus, srv, name, sha, "2.0.0", "u1")
    bus.wait(f"{T}/ota", lambda m: m.json()["phase"] == "downloading" and m.json().get("progress", 0) > 0)
    node.kill9()
    part = next((tmp_path / "state" / "ota" / "staging").glob("*.part"))
    kept = part.stat().st_size
    assert kept > 0

    restarted = bus.messages[-1].at
    node = _start(env, tmp_path, bus, "1.0.0", since=restarted)
    try:
        ev = Event.model_validate_json(
            bus.wait(f"{T}/events", lambda m: m.json().get("id") == "u1", since=restarted).payload
        )
        assert not ev.ok and "interrupted by a restart" in (ev.error or "")
        assert _heartbeat(bus, restarted).model_source == "factory"

        srv.requests.clear()
        _publish_update(bus, srv, name, sha, "2.0.0", "u2")
        ok = bus.wait(f"{T}/events", lambda m: m.json().get("id") == "u2", timeout=40).json()
        assert ok["ok"], ok
        assert srv.requests[0][1:] == (f"bytes={kept}-", 206)  # resumed from the partial file
        _serving(bus, node, "2.0.0")
    finally:
        node.terminate()


def test_kill9_during_activation_restarts_on_the_last_good_bundle(world: World, tmp_path: Path) -> None:
    env, bus, srv, site, key = world
    name2, sha2 = _release(site, tmp_path, key, "2.0.0")
    name3, sha3 = _release(site, tmp_path, key, "3.0.0")
    node = _start(env, tmp_path, bus, "1.0.0")
    _publish_update(bus, srv, name2, sha2, "2.0.0", "a2")
    assert bus.wait(f"{T}/events", lambda m: m.json().get("id") == "a2", timeout=40).json()["ok"]

    _publish_update(bus, srv, name3, sha3, "3.0.0", "a3")
    _serving(bus, node, "3.0.0")  # swapped in, health check still running: not committed
    node.kill9()
    state = json.loads((tmp_path / "state" / "ota" / "state.json").read_text())
    assert state["active"].startswith("2.0.0-") and state["pending"]["version"] == "3.0.0"

    restarted = bus.messages[-1].at
    node = _start(env, tmp_path, bus, "2.0.0", since=restarted)
    try:
        assert _heartbeat(bus, restarted).model_source == "active"
        ev = bus.wait(f"{T}/events", lambda m: m.json().get("id") == "a3", since=restarted).json()
        assert not ev["ok"] and "interrupted" in ev["error"]
        bundles = sorted(p.name.split("-")[0] for p in (tmp_path / "state" / "ota" / "bundles").iterdir())
        assert bundles == ["2.0.0"]  # the uncommitted 3.0.0 was collected; previous is the factory
    finally:
        node.terminate()
