"""Bounded memory and CPU in the dashboard (issue 16, item 5): caps at ingest (nodes, ids, payload sizes,
what decoding keeps), per tick (streamed messages), per browser (a queue, a write timeout, ``max_clients``
counted until each handler has returned, a limit on stream connects per address), and a full picture built
once per tick however many browsers connect. The pure parts directly, the server in-process on loopback, and
the real process with a hostile node and a browser that never reads."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from edge_node.config import DashboardConfig, MqttConfig
from edge_node.dashboard.board import Board
from edge_node.dashboard.exposure import exposure
from edge_node.dashboard.inbox import MAX_PAYLOAD, MAX_STREAMED, Inbox, Refused
from edge_node.dashboard.limits import RateLimit, client_key
from edge_node.dashboard.server import Dashboard
from edge_node.fleet.simnode import SimNode
from edge_node.wire import Event
from tests.support.brokers import Mosquitto
from tests.support.dashboard_procs import TOKEN, DashboardProcess
from tests.support.dashboard_procs import http_request as _request
from tests.support.fleet_procs import Simulator
from tests.support.nodeproc import Collector

pytestmark = pytest.mark.timeout(240)

_TCP_ESTABLISHED, _TCP_CLOSE = 1, 7


def test_rate_limit_is_a_sliding_window_per_address_with_a_bounded_table() -> None:
    limit = RateLimit(3, window=60.0, clients=2)
    assert [limit.allow("a", t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert limit.wait("a", 3.0) == pytest.approx(57.0)
    assert limit.allow("a", 60.0) and not limit.allow("a", 60.5)  # the first left the window, one more fits
    assert limit.allow("b", 61.0) and limit.allow("c", 62.0)  # a third address: the least recent (a) goes
    assert [limit.allow("a", 63.0) for _ in range(4)] == [True, True, True, False]
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff") == "2001:db8::/64"  # one host, one /64
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1" and client_key("10.0.0.1") != client_key("10.0.0.2")


def test_the_inbox_bounds_nodes_ids_and_payload_sizes() -> None:
    inbox = Inbox("gp", max_nodes=2, backlog=3)
    inbox.ingest("gp/a/heartbeat", b"{}")
    inbox.ingest("gp/" + "x" * 65 + "/heartbeat", b"{}")  # longer than any node id may be
    inbox.ingest("gp/b/status", b"online")
    inbox.ingest("gp/c/heartbeat", b"{}")  # a third node: past max_nodes
    inbox.ingest("gp/a/predictions", b"{" + b" " * MAX_PAYLOAD + b"}")  # too large: a Refused stands in
    inbox.ingest("gp/a/snapshot", b"\xff\xd8" + bytes(500_000))  # a snapshot may be larger
    kept = {topic: raw for topic, raw, _ in inbox.entries()}
    assert set(kept) == {"gp/a/heartbeat", "gp/b/status", "gp/a/predictions", "gp/a/snapshot"}
    assert isinstance(kept["gp/a/predictions"], Refused) and len(kept["gp/a/snapshot"]) == 500_002
    assert inbox.nodes_refused == 2
    events = [Event(id=f"e{i}", cmd="ping", ok=True).to_bytes() for i in range(5)]
    for payload in events:
        inbox.stream("gp/a/events", payload)
    inbox.stream("gp/c/events", events[0])  # not admitted
    assert inbox.streamed_dropped == 2 and inbox.nodes_refused == 3
    assert [raw for _, raw, _ in inbox.take_streamed(2)] == events[2:4]
    inbox.stream("gp/a/events", b"[" * (MAX_STREAMED + 1))
    rest = inbox.take_streamed(10)
    assert len(rest) == 2 and isinstance(rest[1][1], Refused)

    board = Board("gp", DashboardConfig())
    delta = board.update(inbox.entries(), rest, 1.0, 1.0)
    card = next(n for n in delta["nodes"] if n["node"] == "a")
    assert card["bad_payloads"] == 2 and "predictions" not in card and len(card["events"]) == 1  # counted, not kept


def _dashboard(**cfg: Any) -> Dashboard:
    config = DashboardConfig(**cfg)
    return Dashboard(config, MqttConfig(host="127.0.0.1"), "gp", TOKEN, exposure(config, "127.0.0.1", "here"))


async def _first_frame(client: TestClient[Any, Any]) -> bytes:
    response = await client.get("/api/stream")
    assert response.status == 200
    data = b""
    async for chunk in response.content.iter_any():
        data += chunk
        if b"\n\n" in data:
            break
    response.close()
    return data.split(b"\n\n")[0]


def test_the_full_picture_is_built_once_per_tick_however_many_browsers_connect() -> None:
    """Each new browser got a full picture built and encoded on the event loop: ~10 MB of JSON at 1000 nodes,
    for every reconnecting tab. Now one per tick, shared, encoded in slices."""

    async def scenario() -> None:
        dash = _dashboard()
        for i in range(300):
            dash.inbox.ingest(f"gp/n{i:03d}/predictions", SimNode(f"n{i:03d}").prediction())
        dash.tick()
        async with TestClient(TestServer(dash.app())) as client:
            frames = await asyncio.gather(*(_first_frame(client) for _ in range(20)))
            assert dash.fulls_built == 1 and len(set(frames)) == 1
            assert frames[0].startswith(b"event: full\ndata: ")
            picture = json.loads(frames[0].partition(b"data: ")[2])
            assert len(picture["nodes"]) == 300 and picture["summary"]["total"] == 300 and "limits" in picture
            dash.tick()
            await _first_frame(client)
            assert dash.fulls_built == 2

    asyncio.run(scenario())


def _heartbeat(node: str, **extra: object) -> bytes:
    beat = json.loads(SimNode(node).heartbeat())
    return json.dumps(beat | extra).encode()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc status")


def _full_picture(base: str) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while b"\n\n" not in data.partition(b"data: ")[2]:
            chunk = sock.recv(1 << 20)
            assert chunk, data[:300]
            data += chunk
    frame = data.partition(b"data: ")[2].split(b"\n\n")[0]
    picture: dict[str, Any] = json.loads(frame)
    return picture


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value.keys(), *(s for v in value.values() for s in _strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_a_hostile_node_costs_bounded_memory(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """300 nodes sending 200 KB heartbeats, 900 more with 10 KB strings and 500 fields each (200 more than
    max_nodes, 1000, allows; QoS 0, so a few may be lost on the way): the dashboard keeps max_nodes cards of
    bounded size, counts what it left out, and its memory grows by a bounded amount (the old code kept every
    payload and every string whole: 80 -> 359 MiB)."""
    dash = DashboardProcess(mosquitto.port, tmp_path)
    evil = Collector(mosquitto.port, ("ghostpi/none",))
    try:
        _full_picture(dash.base)  # warm up the paths measured below
        before = _rss_mb(dash.proc.pid)
        for i in range(300):
            evil.publish(f"ghostpi/fat-{i:03d}/heartbeat", _heartbeat("fat", last_error="e" * 200_000), qos=0)
        wide = {f"field_{j:03d}_{'w' * 20}": "v" * 20 for j in range(500)}
        for i in range(900):
            evil.publish(f"ghostpi/wide-{i:03d}/heartbeat", _heartbeat("wide", last_error="e" * 10_000, **wide), qos=0)
        evil.publish("ghostpi/fat-000/status", b"online")  # QoS 1 after the QoS 0 flood: all of it is there
        deadline = time.monotonic() + 60
        while (picture := _full_picture(dash.base))["nodes"][0]["status"] != "online":
            assert time.monotonic() < deadline, picture["summary"]
            time.sleep(0.5)
        after = _rss_mb(dash.proc.pid)
        print(f"dashboard RSS {before:.1f} -> {after:.1f} MiB; full picture {len(json.dumps(picture)) / 1e6:.1f} MB")
        cards = {card["node"]: card for card in picture["nodes"]}
        assert len(cards) == 1000 and picture["limits"]["node_messages_ignored"] > 0
        fat = [card for name, card in cards.items() if name.startswith("fat-")]
        assert len(fat) > 250 and all(c["bad_payloads"] == 1 and "heartbeat" not in c for c in fat)  # QoS 0
        assert all(len(c["heartbeat"]["other"]) <= 25 for name, c in cards.items() if name.startswith("wide-"))
        assert max(len(s) for s in _strings(picture)) <= 200
        assert after - before < 120, (before, after)  # ~60 MB of oversized payloads alone were kept before
    finally:
        evil.close()
        dash.close()


def _tcp_state(sock: socket.socket) -> int:
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0])


class _Reader(threading.Thread):
    """A browser that reads: counts the stream's frames."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.frames = 0
        self.start()

    def run(self) -> None:
        with self.sock:
            while chunk := self.sock.recv(65536):
                self.frames += chunk.count(b"\n\n")


def _stuck(port: int) -> socket.socket:
    """A browser that asks for the stream and then never reads a byte (a tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock


def test_a_browser_that_stops_reading_is_cut_off_and_counted_until_then(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The old server dropped a browser that fell behind from its count while its handler stayed blocked in a
    write forever: max_clients did not bound connections, and the socket was never closed. Now a write that
    is not accepted within EDGE_DASHBOARD__WRITE_TIMEOUT (10 s) resets the connection, the handler returns, and
    only then is the place free; the others keep getting their batches."""
    sim = Simulator(mosquitto.port, tmp_path, "--nodes", "100", "--rate", "10", "--heartbeat", "2")
    dash = None
    try:
        sim.wait_event("online", timeout=60)
        dash = DashboardProcess(mosquitto.port, tmp_path, EDGE_DASHBOARD__MAX_CLIENTS="2")
        port = int(dash.base.rsplit(":", 1)[1])
        reader = _Reader(port)
        stuck = _stuck(port)
        before = _rss_mb(dash.proc.pid)
        deadline = time.monotonic() + 90
        while _tcp_state(stuck) == _TCP_ESTABLISHED:
            assert time.monotonic() < deadline, "the server never dropped the browser that stopped reading"
            status = _request(dash.base + "/api/stream", read=False)[0]
            if _tcp_state(stuck) == _TCP_ESTABLISHED:
                assert status == 503, "a third stream was served while two were open (max_clients=2)"
            time.sleep(3.0)  # each try counts against the 30 stream connects a minute
        assert _tcp_state(stuck) == _TCP_CLOSE  # reset: nothing left queued in the kernel for it
        stuck.close()
        assert "accepted nothing for 10 s" in dash.log()
        frames = reader.frames
        status, _, first = _request(dash.base + "/api/stream", read=False)  # the place is free again
        assert status == 200 and first.startswith(b"event: full")
        wait = time.monotonic() + 30
        while reader.frames < frames + 8:  # the reading browser was never disturbed
            assert time.monotonic() < wait and reader.is_alive()
            time.sleep(0.2)
        after = _rss_mb(dash.proc.pid)
        print(f"dashboard RSS {before:.1f} -> {after:.1f} MiB with a browser that never read")
        assert after - before < 50, (before, after)
    finally:
        if dash is not None:
            dash.close()
        sim.close()


def test_stream_connects_are_limited_per_address(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A page reconnecting in a loop (or a script) cannot make the server build stream after stream."""
    dash = DashboardProcess(mosquitto.port, tmp_path)
    try:
        statuses = [_request(dash.base + "/api/stream", read=False)[0] for _ in range(30)]
        assert statuses == [200] * 30  # the default: 30 a minute per address
        status, headers, body = _request(dash.base + "/api/stream")
        assert status == 429 and b"EDGE_DASHBOARD__STREAM_CONNECTS_PER_MINUTE" in body
        assert int(headers["Retry-After"]) > 0
        assert _request(dash.base + "/api/config")[0] == 200  # the rest of the dashboard still answers
    finally:
        dash.close()


def test_a_fleet_dashboard_follows_heartbeats_and_state_and_names_its_server() -> None:
    """EDGE_DASHBOARD__PREDICTIONS=false: no subscription to predictions (a tenth of a fleet's messages); with a
    server list the header names the server the dashboard is on (or tries next), one of the list."""
    config = DashboardConfig(predictions=False)
    mqtt = MqttConfig.model_validate({"hosts": "127.0.0.1:1884,127.0.0.1:1885"})
    dash = Dashboard(config, mqtt, "gp", TOKEN, exposure(config, "127.0.0.1", "here"))
    assert "predictions" not in dash.mqtt.leaves and {"heartbeat", "status", "state"} <= set(dash.mqtt.leaves)
    broker = dash.broker_status()
    assert (broker["host"], broker["port"]) in {("127.0.0.1", 1884), ("127.0.0.1", 1885)}
    assert "predictions" in _dashboard().mqtt.leaves
