from __future__ import annotations

import json

import pytest

from edge_node.domain import Mode, PublishPolicy
from edge_node.errors import CommandError
from edge_node.messages import Event, Ping, SetMode, SetPublish, UpdateModel, parse_command
from edge_node.mqtt.control import ControlRouter, TokenBucket
from edge_node.publish import PublishGate
from edge_node.topics import Topics


def test_commands_parse_into_the_union() -> None:
    assert parse_command(b'{"id": "a", "cmd": "set_mode", "mode": "auto"}') == SetMode(
        id="a", cmd="set_mode", mode=Mode.AUTO
    )
    assert isinstance(parse_command(b'{"cmd": "ping"}'), Ping)
    sp = parse_command(b'{"cmd": "set_publish", "policy": "rate", "max_hz": 2}')
    assert isinstance(sp, SetPublish) and sp.policy is PublishPolicy.RATE and sp.max_hz == 2
    um = parse_command(
        json.dumps(
            {"cmd": "update_model", "url": "https://x/b.tar.gz", "sha256": "AB" * 32, "version": "2.0.1"}
        ).encode()
    )
    assert isinstance(um, UpdateModel) and um.sha256 == "ab" * 32


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{nope", "invalid JSON"),
        (b"[]", "object"),
        (b'{"cmd": "reboot"}', "unknown command"),
        (b'{"mode": "high"}', "missing 'cmd'"),
        (b'{"cmd": "set_mode", "mode": 3}', "set_mode.mode"),
        (b'{"cmd": "set_mode", "mode": "high", "extra": 1}', "extra"),
        (b'{"cmd": "update_model", "url": "https://h/x", "sha256": "zz", "version": "1"}', "sha256"),
        (
            b'{"cmd": "update_model", "url": "https://h/x", "sha256": "' + b"a" * 64 + b'", "version": "../x"}',
            "version",
        ),
        (b'{"cmd": "ping", "id": ""}', "id"),
    ],
)
def test_invalid_commands_say_what_is_wrong(payload: bytes, needle: str) -> None:
    with pytest.raises(CommandError, match=needle):
        parse_command(payload)


def test_oversized_payload_is_refused_before_parsing() -> None:
    with pytest.raises(CommandError, match="exceeds the 100-byte limit"):
        parse_command(b'{"cmd": "ping", "pad": "' + b"x" * 200 + b'"}', max_bytes=100)


def test_router_turns_errors_into_correlated_events_and_rate_limits() -> None:
    router = ControlRouter(max_bytes=1000, rate=1.0)
    ev = router.route(b'{"id": "q1", "cmd": "set_mode", "mode": "warp"}', now=0.0)
    assert isinstance(ev, Event) and not ev.ok and ev.id == "q1" and ev.cmd == "set_mode"
    assert isinstance(router.route(b'{"cmd": "ping"}', now=0.0), Ping)
    assert router.route(b'{"cmd": "ping"}', now=0.0) is None  # burst of 2 used up
    assert router.limited == 1
    assert isinstance(router.route(b'{"cmd": "ping"}', now=1.0), Ping)  # refilled


def test_token_bucket_refills_at_its_rate() -> None:
    b = TokenBucket(rate=10, burst=2)
    assert [b.take(0.0) for _ in range(3)] == [True, True, False]
    assert b.take(0.1) and not b.take(0.1)


def test_publish_gate_policies() -> None:
    every = PublishGate(PublishPolicy.EVERY, 1)
    assert all(every.allow("cat", t / 100) for t in range(10))
    rate = PublishGate(PublishPolicy.RATE, 2.0)
    assert [rate.allow("cat", t / 10) for t in range(12)].count(True) == 3  # t=0, 0.5, 1.0
    change = PublishGate(PublishPolicy.CHANGE, 1)
    assert [change.allow(label, 0) for label in ["cat", "cat", "dog", "dog", "cat"]] == [True, False, True, False, True]


def test_topics_are_built_and_parsed_in_one_place() -> None:
    t = Topics("ghostpi", "n1")
    assert t.predictions == "ghostpi/n1/predictions" and t.fleet_control == "ghostpi/all/control"
    assert t.subscriptions == ("ghostpi/n1/control", "ghostpi/all/control")
    assert t.ha_mode == "ghostpi/n1/ha/mode"
    assert Topics.parse("ghostpi", t.ha_mode) is None  # not telemetry: dashboards skip it
    assert Topics.parse("ghostpi", "ghostpi/n1/heartbeat") == ("n1", "heartbeat")
    assert Topics.parse("ghostpi", "other/n1/heartbeat") is None
    assert Topics.parse("ghostpi", "ghostpi/n1/a/b") is None
    assert Topics.wildcard("ghostpi", "predictions") == "ghostpi/+/predictions"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"id":"\\ud800","cmd":"ping"}',
        b'{"cmd":"\xed\xa0\x80"}',
        b'{"id":"x","cmd":"ping","deep":' + b"[" * 1000 + b"]" * 1000 + b"}",
    ],
    ids=["escaped-surrogate", "raw-surrogate", "deep-nesting"],
)
def test_router_answers_hostile_payloads_with_a_publishable_event(payload: bytes) -> None:
    ev = ControlRouter(max_bytes=16384, rate=100.0).route(payload, now=0.0)
    assert isinstance(ev, Event) and not ev.ok
    json.loads(ev.to_bytes())  # serialising the answer must not fail either


def test_wrong_types_are_refused_not_coerced() -> None:
    for raw in ('"2"', "true", "1e-320", "0"):
        with pytest.raises(CommandError, match="max_hz"):
            parse_command(f'{{"cmd":"set_publish","policy":"rate","max_hz":{raw}}}'.encode())
    cmd = parse_command(b'{"cmd":"set_publish","policy":"rate","max_hz":2}')
    assert isinstance(cmd, SetPublish) and cmd.max_hz == 2.0
