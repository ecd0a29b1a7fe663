"""``edge-node dashboard`` as a real process on a real mosquitto, spoken to over HTTP on loopback: who may
watch and act, cross-site defences, headers, and commands reaching the broker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.dashboard.security import CSP, cross_site_reason, token_ok
from tests.support.brokers import Mosquitto
from tests.support.dashboard_procs import TOKEN, DashboardProcess
from tests.support.dashboard_procs import http_request as _request
from tests.support.nodeproc import Collector

pytestmark = pytest.mark.timeout(90)

SECRET = "mqtt-secret-never-in-the-browser"


def _act(base: str, target: str, body: object, **headers: str) -> tuple[int, dict[str, object]]:
    status, _, raw = _request(
        f"{base}/api/nodes/{target}/command",
        method="POST",
        body=body,
        headers={"Content-Type": "application/json"} | headers,
    )
    return status, json.loads(raw)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def dash(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[DashboardProcess]:
    proc = DashboardProcess(mosquitto.port, tmp_path, EDGE_MQTT__USERNAME="dashboard", EDGE_MQTT__PASSWORD=SECRET)
    try:
        yield proc
    finally:
        proc.close()


def test_tokens_are_compared_whole_and_only_as_bearer() -> None:
    assert token_ok("a" * 20, "Bearer " + "a" * 20) and token_ok("a" * 20, "bearer " + "a" * 20)
    assert not token_ok("a" * 20, "Bearer " + "a" * 19)
    assert not token_ok("a" * 20, "Basic " + "a" * 20)
    assert not token_ok("a" * 20, None) and not token_ok(None, "Bearer x")


def test_cross_site_requests_are_named() -> None:
    json_headers = {"Content-Type": "application/json"}
    assert cross_site_reason("GET", {}, "http", "h:1") is None
    assert cross_site_reason("POST", json_headers | {"Origin": "http://h:1"}, "http", "h:1") is None
    assert "application/json" in (cross_site_reason("POST", {"Content-Type": "text/plain"}, "http", "h:1") or "")
    assert "Origin" in (cross_site_reason("POST", json_headers | {"Origin": "http://evil"}, "http", "h:1") or "")
    reason = cross_site_reason("POST", json_headers | {"Sec-Fetch-Site": "cross-site"}, "http", "h:1")
    assert reason and "cross-site" in reason


def test_page_assets_and_headers_without_credentials(dash: DashboardProcess) -> None:
    status, headers, page = _request(dash.base + "/")
    assert status == 200 and b"<title>GhostPi fleet</title>" in page
    assert headers["Content-Security-Policy"] == CSP and "script-src 'self'" in CSP and "unsafe" not in CSP
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    assert b"http://" not in page and b"https://" not in page.replace(b"https://\xe2\x80\xa6", b"")  # no CDN
    bodies = [page]
    for name in ("app.js", "style.css", "favicon.svg"):
        status, _, body = _request(f"{dash.base}/static/{name}")
        assert status == 200 and body, name
        bodies.append(body)
    status, headers, config = _request(dash.base + "/api/config")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert json.loads(config)["prefix"] == "ghostpi" and json.loads(config)["token_ok"] is False
    status, _, stream = _request(dash.base + "/api/stream", read=False)
    assert status == 200 and stream.startswith(b"event: full\ndata: ")  # viewing is open by default
    bodies += [config, stream]
    assert not any(SECRET.encode() in body for body in bodies)
    assert _request(dash.base + "/static/../config.py")[0] == 404


def test_actions_need_the_token_and_a_same_origin_json_request(dash: DashboardProcess, mosquitto: Mosquitto) -> None:
    bus = Collector(mosquitto.port, ("ghostpi/+/control",))
    try:
        ping = {"cmd": "ping"}
        assert _act(dash.base, "cam-1", ping)[0] == 401
        status, answer = _act(dash.base, "cam-1", ping, Authorization="Bearer wrong-token-wrong-token")
        assert status == 401 and "EDGE_DASHBOARD__TOKEN" in str(answer["error"])
        assert _act(dash.base, "cam-1", ping, Origin="http://evil.example", **AUTH)[0] == 403
        assert _act(dash.base, "cam-1", ping, **{"Sec-Fetch-Site": "cross-site"}, **AUTH)[0] == 403
        status, _, _ = _request(
            f"{dash.base}/api/nodes/cam-1/command", method="POST", body=b'{"cmd":"ping"}',
            headers={"Content-Type": "text/plain"} | AUTH,
        )  # fmt: skip
        assert status == 403  # what a cross-site form could send
        status, answer = _act(dash.base, "cam-1", {"cmd": "set_mode", "mode": "turbo"}, **AUTH)
        assert status == 400 and "mode" in str(answer["error"])
        assert _act(dash.base, "a/b", ping, **AUTH)[0] in (400, 404)
        assert bus.messages == []  # nothing refused reached the broker

        status, answer = _act(dash.base, "cam-1", {"cmd": "set_mode", "mode": "performance"},
                              Origin=dash.base, **AUTH)  # fmt: skip
        assert status == 202 and str(answer["id"]).startswith("dash-")
        sent = bus.wait("ghostpi/cam-1/control").json()
        assert sent == {"id": answer["id"], "cmd": "set_mode", "mode": "performance"}
        status, answer = _act(dash.base, "all", {"cmd": "ping"}, **AUTH)
        assert status == 202 and bus.wait("ghostpi/all/control").json()["id"] == answer["id"]
    finally:
        bus.close()
    assert "refused POST /api/nodes/cam-1/command" in dash.log()


def test_viewing_can_require_the_token(mosquitto: Mosquitto, tmp_path: Path) -> None:
    dash = DashboardProcess(mosquitto.port, tmp_path, EDGE_DASHBOARD__VIEW_REQUIRES_TOKEN="true")
    try:
        assert _request(dash.base + "/")[0] == 200  # the page itself, to type the token into
        assert _request(dash.base + "/api/stream")[0] == 401
        assert _request(dash.base + "/api/nodes/x/snapshot.jpg")[0] == 401
        status, _, stream = _request(dash.base + "/api/stream", headers=AUTH, read=False)
        assert status == 200 and stream.startswith(b"event: full")
    finally:
        dash.close()
