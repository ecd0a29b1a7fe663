"""``edge-node ctl`` as a real process against a real mosquitto and a simulated fleet that answers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.fleet.ctl import Tracker
from edge_node.messages import Event, OtaStatus
from edge_node.ota.download import sha256_file
from tests.support.brokers import Mosquitto
from tests.support.nodeproc import Collector
from tests.support.paths import clean_env

pytestmark = pytest.mark.timeout(90)


def test_tracker_matches_answers_by_id_and_reports_ota_phases() -> None:
    t = Tracker("gp", "c1")
    t.status("a", b"online")
    t.status("b", b"offline")
    t.expected.add("c")
    assert t.feed("gp/a/events", Event(id="other", cmd="ping", ok=True).to_bytes()) is None
    assert t.feed("gp/a/ota", OtaStatus(node="a", ts=1, phase="downloading", progress=50, id="c1").to_bytes()) == (
        "a: downloading 50%"
    )
    assert t.feed("gp/a/ota", OtaStatus(node="a", ts=2, phase="downloading", progress=50, id="c1").to_bytes()) is None
    t.feed("gp/a/events", Event(id="c1", cmd="ping", ok=True).to_bytes())
    t.feed("gp/a/events", Event(id="c1", cmd="ping", ok=False, error="late duplicate").to_bytes())
    assert not t.done()
    t.feed("gp/c/events", Event(id="c1", cmd="ping", ok=False, error="boom").to_bytes())
    assert t.done()
    a, c = t.results()
    assert (a.node, a.ok, c.node, c.ok) == ("a", True, "c", False)
    assert c.line() == "c: FAILED ping: boom"


def _env(port: int) -> dict[str, str]:
    return clean_env(EDGE_MQTT__HOST="127.0.0.1", EDGE_MQTT__PORT=str(port), EDGE_TOPIC_PREFIX="t")


def _ctl(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_node", "ctl", *args], env=_env(port), capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def fleet(mosquitto: Mosquitto) -> Iterator[Mosquitto]:
    """Three simulated nodes (sim-001..003) that answer ping and set_mode, and refuse OTA commands."""
    watcher = Collector(mosquitto.port, ("t/+/status",))
    sim = subprocess.Popen(
        [sys.executable, "-m", "edge_node", "simulate", "--nodes", "3", "--rate", "2", "--duration", "60"],
        env=_env(mosquitto.port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for node in ("sim-001", "sim-002", "sim-003"):
            watcher.wait(f"t/{node}/status", lambda m: m.payload == b"online", timeout=30)
        yield mosquitto
    finally:
        watcher.close()
        sim.terminate()
        sim.wait(10)


def test_ctl_against_a_fleet(fleet: Mosquitto, tmp_path: Path) -> None:
    out = _ctl(fleet.port, "all", "ping")
    assert out.returncode == 0, out.stderr
    lines = sorted(out.stdout.splitlines())
    assert [line.split(" uptime_s=")[0] for line in lines] == [f"sim-00{i}: ok ping" for i in (1, 2, 3)]

    out = _ctl(fleet.port, "sim-002", "set-mode", "balanced")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "sim-002: ok set_mode mode=balanced resolution=192"

    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(b"x" * 100)
    out = _ctl(
        fleet.port,
        "all",
        "update-model",
        "https://h/b.tar.gz",
        "--sha256",
        sha256_file(archive),
        "--version",
        "2.0.0",
        "--timeout",
        "10",
    )
    assert out.returncode == 1
    assert out.stdout.count("FAILED update_model") == 3

    out = _ctl(fleet.port, "ghost", "ping", "--timeout", "1")
    assert (out.returncode, out.stdout.strip()) == (1, "ghost: TIMEOUT no answer (offline, or still busy?)")


def test_ctl_all_with_no_node_online_sends_nothing(mosquitto: Mosquitto) -> None:
    watcher = Collector(mosquitto.port, ("t/+/control",))
    out = _ctl(mosquitto.port, "all", "rollback")
    watcher.close()
    assert out.returncode == 1 and "no node is online" in out.stderr
    assert watcher.messages == []


def test_ctl_rejects_a_bad_sha256_before_sending(mosquitto: Mosquitto) -> None:
    out = _ctl(mosquitto.port, "n1", "update-model", "https://h/b.tar.gz", "--sha256", "xyz", "--version", "1")
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "edge-node: error: invalid command: sha256: Value error, sha256 must be 64 hexadecimal characters"
    )
