"""Who can reach the dashboard, as a real process on a real mosquitto (issue 16, items 3 and 6d): snapshots
always need the token; beyond loopback, viewing needs it too and plain HTTP is refused unless allowed; TLS;
only known Host names (DNS rebinding); wrong tokens limited per address wherever a token is checked; a
generated token never printed where a journal keeps it."""

from __future__ import annotations

import http.client
import json
import os
import pty
import select
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.config import DashboardConfig
from edge_node.dashboard.exposure import exposure, host_name
from edge_node.errors import ConfigError
from tests.support.brokers import Mosquitto
from tests.support.dashboard_procs import TOKEN, DashboardProcess
from tests.support.dashboard_procs import http_request as _request
from tests.support.fleet_procs import edge_env, stop_process
from tests.support.nodeproc import Collector
from tests.support.pki import Authority

pytestmark = pytest.mark.timeout(120)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
WRONG = {"Authorization": "Bearer " + "not-the-token-" * 3}
PING = {"cmd": "ping"}
JSON = {"Content-Type": "application/json"}


def _dashboard(port: int, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edge_node", "dashboard", "--port", "0", *args]
    return subprocess.run(cmd, env=edge_env(port, **env), capture_output=True, text=True, timeout=60, check=False)


def test_the_policy_follows_the_bind() -> None:
    cfg = DashboardConfig()
    local = exposure(cfg, "127.0.0.1", "dash-host")
    assert local.loopback and not local.view_needs_token and not local.tls
    assert exposure(cfg, "::1", "h").loopback and exposure(cfg, "localhost", "h").loopback
    with pytest.raises(ConfigError, match="EDGE_DASHBOARD__ALLOW_HTTP=true"):
        exposure(cfg, "0.0.0.0", "h")
    with pytest.raises(ConfigError, match="EDGE_DASHBOARD__TLS_CERT"):
        exposure(cfg, "dash.lan", "h")  # a name may resolve to anything: not loopback
    lan = exposure(DashboardConfig(allow_http=True), "0.0.0.0", "h")
    assert not lan.loopback and lan.view_needs_token
    opened = exposure(DashboardConfig(allow_http=True, view_requires_token=False), "0.0.0.0", "h")
    assert not opened.view_needs_token
    assert exposure(DashboardConfig(view_requires_token=True), "127.0.0.1", "h").view_needs_token
    named = exposure(DashboardConfig(allowed_hosts=["Dash.Example.", "other.lan"]), "127.0.0.1", "Dash-Host")
    for served in ("localhost:8080", "dash-host", "dash.example", "DASH.EXAMPLE.:1",
                   "other.lan", "127.0.0.1:9", "[::1]:8080", "10.1.2.3"):  # fmt: skip
        assert named.serves(served), served
    for refused in ("attacker.example", "localhost.attacker.example", "", None, "[", "dash.example.attacker"):
        assert not named.serves(refused), refused
    assert host_name("[fe80::1]:80") == "fe80::1" and host_name("Name.LAN.:443") == "name.lan"


@pytest.fixture
def dash(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[DashboardProcess]:
    proc = DashboardProcess(mosquitto.port, tmp_path, EDGE_DASHBOARD__ALLOWED_HOSTS="dash.example.lan")
    try:
        yield proc
    finally:
        proc.close()


def test_snapshots_always_need_the_token(dash: DashboardProcess) -> None:
    """A camera image is more than watching: even where the stream is open (loopback, the default)."""
    assert _request(dash.base + "/api/stream", read=False)[0] == 200
    status, _, body = _request(dash.base + "/api/nodes/cam-1/snapshot.jpg")
    assert status == 401 and b"EDGE_DASHBOARD__TOKEN" in body
    assert _request(dash.base + "/api/nodes/cam-1/snapshot.jpg", headers=AUTH)[0] == 404  # none taken yet


def test_only_known_host_names_are_served(dash: DashboardProcess, mosquitto: Mosquitto) -> None:
    """DNS rebinding: a page the operator visits makes its own name resolve to 127.0.0.1 and reads the
    dashboard as same-origin. Its requests still carry its name in Host, which is refused with 421."""
    bus = Collector(mosquitto.port, ("ghostpi/+/control",))
    port = dash.base.rsplit(":", 1)[1]
    try:
        evil = {"Host": f"rebind.attacker.example:{port}"}
        for path in ("/", "/static/app.js", "/api/config", "/api/stream"):
            status, headers, body = _request(dash.base + path, headers=evil | AUTH)
            assert status == 421, path
            assert b"EDGE_DASHBOARD__ALLOWED_HOSTS" in body and "Content-Security-Policy" in headers
        status, _, _ = _request(f"{dash.base}/api/nodes/n/command", method="POST", body=PING,
                                headers=evil | AUTH | JSON | {"Origin": "http://rebind.attacker.example"})  # fmt: skip
        assert status == 421
        served = [f"localhost:{port}", f"127.0.0.1:{port}", "dash.example.lan", f"DASH.example.lan.:{port}",
                  socket.gethostname(), f"[::1]:{port}"]  # fmt: skip
        for host in served:
            assert _request(dash.base + "/", headers={"Host": host})[0] == 200, host
        status, _, _ = _request(f"{dash.base}/api/nodes/n/command", method="POST", body=PING,
                                headers={"Host": "dash.example.lan"} | AUTH | JSON)  # fmt: skip
        assert status == 202
        bus.wait("ghostpi/n/control")
        assert len(bus.messages) == 1  # only the command sent by a served name
        assert "Host 'rebind.attacker.example" in dash.log()
    finally:
        bus.close()


def test_a_non_loopback_bind_needs_tls_or_an_explicit_allow(mosquitto: Mosquitto, tmp_path: Path) -> None:
    out = _dashboard(mosquitto.port, "--bind", "0.0.0.0", EDGE_DASHBOARD__TOKEN=TOKEN,
                     EDGE_STATE_DIR=str(tmp_path))  # fmt: skip
    assert out.returncode == 2, out
    assert "plain HTTP" in out.stderr and "EDGE_DASHBOARD__TLS_CERT" in out.stderr
    assert "EDGE_DASHBOARD__ALLOW_HTTP=true" in out.stderr and "GhostPi dashboard" not in out.stdout


def test_beyond_loopback_viewing_needs_the_token_unless_opened_explicitly(mosquitto: Mosquitto, tmp_path: Path) -> None:
    dash = DashboardProcess(mosquitto.port, tmp_path, "--bind", "0.0.0.0", EDGE_DASHBOARD__ALLOW_HTTP="true")
    try:
        assert _request(dash.base + "/")[0] == 200  # the page, to type the token into
        assert _request(dash.base + "/api/stream")[0] == 401
        status, _, stream = _request(dash.base + "/api/stream", headers=AUTH, read=False)
        assert status == 200 and stream.startswith(b"event: full")
        assert json.loads(_request(dash.base + "/api/config")[2])["view_requires_token"] is True
        assert "plain HTTP" in dash.log()  # what was allowed is said
    finally:
        dash.close()
    dash = DashboardProcess(mosquitto.port, tmp_path, "--bind", "0.0.0.0", EDGE_DASHBOARD__ALLOW_HTTP="true",
                            EDGE_DASHBOARD__VIEW_REQUIRES_TOKEN="false")  # fmt: skip
    try:
        assert _request(dash.base + "/api/stream", read=False)[0] == 200
        assert _request(dash.base + "/api/nodes/x/snapshot.jpg")[0] == 401
        assert "anyone who reaches this port can watch" in dash.log()
    finally:
        dash.close()


def test_tls_serves_the_page_the_stream_and_actions(mosquitto: Mosquitto, tmp_path: Path) -> None:
    ca = Authority(tmp_path / "pki")
    cert, key = ca.issue("dashboard", server=True)
    client = ssl.create_default_context(cafile=str(ca.ca_file))
    dash = DashboardProcess(mosquitto.port, tmp_path, "--bind", "0.0.0.0", tls=client,
                            EDGE_DASHBOARD__TLS_CERT=str(cert), EDGE_DASHBOARD__TLS_KEY=str(key))  # fmt: skip
    try:
        assert dash.url.startswith("https://") and dash.base.startswith("https://127.0.0.1:")
        assert _request(dash.base + "/", tls=client)[0] == 200
        assert _request(dash.base + "/api/stream", tls=client)[0] == 401  # beyond loopback: the token
        status, _, stream = _request(dash.base + "/api/stream", headers=AUTH, read=False, tls=client)
        assert status == 200 and stream.startswith(b"event: full")
        status, _, _ = _request(f"{dash.base}/api/nodes/n/command", method="POST", body=PING, tls=client,
                                headers=AUTH | JSON | {"Origin": dash.base})  # fmt: skip
        assert status == 202
        with pytest.raises((OSError, http.client.HTTPException)):  # plain HTTP on the TLS port: no answer
            _request(dash.base.replace("https://", "http://") + "/")
    finally:
        dash.close()


def test_wrong_tokens_are_limited_per_address_wherever_a_token_is_checked(dash: DashboardProcess) -> None:
    """/api/config said whether a token was right, as often as asked. Past 10 wrong tokens a minute
    (the default), every token from that address is refused, the right one too, everywhere."""
    for _ in range(10):
        status, _, body = _request(dash.base + "/api/config", headers=WRONG)
        assert status == 200 and json.loads(body)["token_ok"] is False
    status, headers, body = _request(dash.base + "/api/config", headers=AUTH)
    assert status == 429 and int(headers["Retry-After"]) > 0 and b"too many wrong operator tokens" in body
    command = _request(f"{dash.base}/api/nodes/n/command", method="POST", body=PING, headers=AUTH | JSON)
    assert command[0] == 429
    assert _request(dash.base + "/api/nodes/n/snapshot.jpg", headers=AUTH)[0] == 429
    status, _, body = _request(dash.base + "/api/config")  # no token, no guess: still answered
    assert status == 200 and json.loads(body)["token_ok"] is False


def test_a_generated_token_goes_to_a_private_file_never_to_the_output(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Under systemd, what the dashboard prints ends up in the journal: the one-time token must not."""
    dash = DashboardProcess(mosquitto.port, tmp_path, EDGE_DASHBOARD__TOKEN="")
    token_file = tmp_path / "dashboard-state" / "dashboard-token"
    try:
        token = token_file.read_text().strip()
        assert len(token) >= 16 and stat.S_IMODE(token_file.stat().st_mode) == 0o600
        status, _, _ = _request(f"{dash.base}/api/nodes/n/command", method="POST", body=PING,
                                headers={"Authorization": f"Bearer {token}"} | JSON)  # fmt: skip
        assert status == 202
    finally:
        dash.close()
    printed = dash.url + "".join(dash.lines()) + dash.log()
    assert "#token=" not in printed and token not in printed and str(token_file) in dash.log()


def test_in_a_terminal_the_generated_token_is_in_the_link(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A person who starts it by hand gets the link that carries the token, and no file is written."""
    state = tmp_path / "state"
    master, slave = pty.openpty()
    with (tmp_path / "dashboard.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_node", "dashboard", "--port", "0"],
            env=edge_env(mosquitto.port, EDGE_DASHBOARD__TOKEN="", EDGE_STATE_DIR=str(state)),
            stdout=slave, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    os.close(slave)
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while b"#token=" not in seen or not seen.rstrip(b" ").endswith(b"\n"):
            assert time.monotonic() < deadline, seen
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 4096)
        line = next(x for x in seen.decode().splitlines() if "#token=" in x)
        token = line.split("#token=")[1].strip()
        base = line.split("GhostPi dashboard: ")[1].split("#")[0].rstrip("/")
        status, _, _ = _request(f"{base}/api/nodes/n/command", method="POST", body=PING,
                                headers={"Authorization": f"Bearer {token}"} | JSON)  # fmt: skip
        assert status in (202, 503)  # 503 only if the broker connection is not up yet: the token was accepted
        assert not (state / "dashboard-token").exists()
    finally:
        stop_process(proc)
        os.close(master)
