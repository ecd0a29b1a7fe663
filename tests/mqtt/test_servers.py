"""The server list and the failover policy (edge_node/mqtt/servers.py): pure, no broker."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from edge_node.config import MqttConfig
from edge_node.mqtt.servers import Backoff, Server, ServerOrder, parse_server, parse_servers


def test_parse_a_list_with_default_ports_and_ipv6() -> None:
    servers = parse_servers("a.lan:8883, b.lan ,[::1]:1884,[fe80::1]", 1883)
    assert servers == (Server("a.lan", 8883), Server("b.lan", 1883), Server("::1", 1884), Server("fe80::1", 1883))
    assert [str(s) for s in servers] == ["a.lan:8883", "b.lan:1883", "[::1]:1884", "[fe80::1]:1883"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a:0", "port"),
        ("a:99999", "port"),
        ("a:x", "port"),
        ("::1", "brackets"),
        ("[::1", "brackets"),
        ("a b:1", "host"),
        ("mqtt://a:1", "brackets"),
    ],
)
def test_bad_items_are_named(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_server(text, 1883)


def test_duplicates_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse_servers("a:1883,a", 1883)


def test_config_hosts_replace_host_and_port() -> None:
    cfg = MqttConfig.model_validate({"host": "old", "port": 8883, "hosts": "x:1,y"})
    assert cfg.servers() == (Server("x", 1), Server("y", 8883))
    one = cfg.for_server(Server("y", 8883))
    assert (one.host, one.port, one.hosts, one.servers()) == ("y", 8883, [], (Server("y", 8883),))
    assert MqttConfig(host="h", port=2).servers() == (Server("h", 2),)
    assert MqttConfig().servers() == (Server("localhost", 1883),) and not MqttConfig().configured
    assert MqttConfig.model_validate({"hosts": ""}).servers() == (Server("localhost", 1883),)


def test_a_fleet_starts_spread_over_the_servers() -> None:
    servers = parse_servers("a,b,c", 1883)
    starts = Counter(ServerOrder(servers, random.Random(seed)).current for seed in range(3000))
    assert set(starts) == set(servers)
    assert min(starts.values()) > 800  # each about 1000: no stampede on the first name


def test_the_order_goes_round_and_counts_failovers() -> None:
    order = ServerOrder(parse_servers("a,b,c", 1), random.Random(1))
    first = order.current
    assert not order.connected() and order.failovers == 0 and order.connected_to == first
    seen = [order.advance() for _ in range(3)]
    assert seen[-1] == first and len(set(seen)) == 3
    assert not order.connected()  # back on the same server: a reconnect, not a failover
    order.advance()
    assert order.connected() and order.failovers == 1 and order.connected_to != first


def test_backoff_tries_the_whole_round_at_once_then_waits_with_jitter() -> None:
    rng = random.Random(7)
    backoff = Backoff(0.5, 30.0)
    assert [backoff.delay(n, 3, rng) for n in (0, 1, 2)] == [0.0, 0.0, 0.0]
    after_round_1 = [backoff.delay(3, 3, rng) for _ in range(200)]
    after_round_4 = [backoff.delay(12, 3, rng) for _ in range(200)]
    assert all(0.25 <= d <= 0.5 for d in after_round_1) and len(set(after_round_1)) > 100
    assert all(2.0 <= d <= 4.0 for d in after_round_4)
    assert all(15.0 <= backoff.delay(300, 3, rng) <= 30.0 for _ in range(50))
    assert all(0.25 <= backoff.delay(1, 1, rng) <= 0.5 for _ in range(50))  # one server: every failure waits
    drops = [backoff.after_drop(rng) for _ in range(200)]
    assert all(0 <= d <= 0.5 for d in drops) and max(drops) - min(drops) > 0.3
