"""Every control payload gets exactly one event (or is dropped by the rate limit), however hostile it is."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_node.commands import CommandHandler
from edge_node.domain import Mode, PublishPolicy
from edge_node.errors import SnapshotError
from edge_node.messages import Event, Rollback, UpdateModel, parse_mode_select
from edge_node.mqtt.control import ControlRouter
from edge_node.publish import PublishGate
from edge_node.snapshot import Jpeg


@dataclass
class Recorder:
    events: list[Event] = field(default_factory=list)
    modes: list[Mode] = field(default_factory=list)
    submitted: list[UpdateModel | Rollback] = field(default_factory=list)
    states: int = 0
    beats: int = 0

    def emit(self, ev: Event) -> None:
        ev.to_bytes()  # what the link would do: it must never fail
        self.events.append(ev)

    def set_mode(self, mode: Mode) -> int:
        self.modes.append(mode)
        return 160

    def submit(self, cmd: UpdateModel | Rollback) -> None:
        self.submitted.append(cmd)
        self.emit(Event(id=cmd.id, cmd=cmd.cmd, ok=True))  # the updater answers each command once

    def state(self) -> None:
        self.states += 1

    def beat(self) -> None:
        self.beats += 1

    async def snapshot(self) -> Jpeg:
        raise SnapshotError("snapshots are off")

    def publish_snapshot(self, data: bytes) -> None:
        raise AssertionError("nothing to publish")


CONTROL, HA_MODE = "t/n/control", "t/n/ha/mode"


def _handler(rec: Recorder, rate: float = 1e9) -> CommandHandler:
    routes = {
        CONTROL: ControlRouter(max_bytes=16384, rate=rate),
        HA_MODE: ControlRouter(max_bytes=16384, rate=rate, parse=parse_mode_select),
    }
    return CommandHandler(
        routes,
        PublishGate(PublishPolicy.EVERY, 2.0),
        set_mode=rec.set_mode,
        emit=rec.emit,
        publish_state=rec.state,
        publish_heartbeat=rec.beat,
        updates=rec,
        take_snapshot=rec.snapshot,
        publish_snapshot=rec.publish_snapshot,
    )


def _handle(handler: CommandHandler, payload: bytes, *, retained: bool = False, topic: str = CONTROL) -> None:
    asyncio.run(handler.handle(topic, payload, retained=retained, now=0.0))


DEEP = b'{"id":"d","cmd":"ping","x":' + b"[" * 1000 + b"]" * 1000 + b"}"
HOSTILE = [
    b'{"id":"\\ud800","cmd":"ping"}',  # a lone surrogate, escaped
    b'{"cmd":"\xed\xa0\x80"}',  # a lone surrogate as raw (invalid UTF-8) bytes
    b'{"id":"\xff\xfe","cmd":"ping"}',  # invalid UTF-8
    DEEP,  # nesting under the size cap
    b'{"a":' * 1000 + b"1" + b"}" * 1000,
    b'{"cmd":"set_publish","policy":"rate","max_hz":"2"}',
    b'{"cmd":"set_publish","policy":"rate","max_hz":true}',
    b'{"cmd":"set_publish","policy":"rate","max_hz":1e-320}',
    b'{"cmd":"set_publish","policy":"rate","max_hz":NaN}',
    b'{"cmd":"set_publish","policy":"rate","max_hz":Infinity}',
    b'{"cmd":"update_model","url":"https://h/x","sha256":"' + b"a" * 64 + b'","version":"1","size":"10"}',
    b'{"cmd":"set_mode","mode":"high","id":5}',
    b'{"cmd":["ping"]}',
    b'{"cmd":null}',
    b"null",
    b"",
    b"\x00" * 64,
    b'"ping"',
    b"1e999999",
]


@pytest.mark.parametrize("payload", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_payloads_get_exactly_one_error_event(payload: bytes) -> None:
    rec = Recorder()
    _handle(_handler(rec), payload)
    assert len(rec.events) == 1, rec.events
    assert not rec.events[0].ok and rec.modes == [] and rec.submitted == []


def test_an_unpublishable_id_is_dropped_from_the_event_not_the_event() -> None:
    rec = Recorder()
    _handle(_handler(rec), b'{"id":"\\ud800","cmd":"ping"}')
    (ev,) = rec.events
    assert ev.id is None and "invalid JSON" in (ev.error or "")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_get_exactly_one_event(payload: bytes) -> None:
    rec = Recorder()
    _handle(_handler(rec), payload)
    assert len(rec.events) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {"cmd": st.sampled_from(["set_mode", "ping", "set_publish", "update_model", "rollback", "x"])},
        optional={"id": json_values, "mode": json_values, "policy": json_values, "max_hz": json_values},
    )
)
def test_any_command_shaped_json_gets_exactly_one_event(data: dict[str, object]) -> None:
    rec = Recorder()
    _handle(_handler(rec), json.dumps(data).encode())
    assert len(rec.events) == 1


def test_rate_limited_payloads_are_dropped_without_an_event() -> None:
    rec = Recorder()
    handler = _handler(rec, rate=1.0)
    for _ in range(5):
        _handle(handler, b'{"cmd":"ping"}')
    assert len(rec.events) == 2 and handler.routes[CONTROL].limited == 3  # burst of 2, then the documented drop


@pytest.mark.parametrize(
    "payload", [b'{"id":"r1","cmd":"rollback"}', b'{"id":"r1","cmd":"set_mode","mode":"performance"}']
)
def test_a_retained_command_is_not_executed_and_says_why(payload: bytes) -> None:
    rec = Recorder()
    _handle(_handler(rec), payload, retained=True)
    (ev,) = rec.events
    assert not ev.ok and ev.id == "r1" and "retained" in (ev.error or "") and "mosquitto_pub -r -n" in (ev.error or "")
    assert rec.modes == [] and rec.submitted == []


def test_valid_commands_run_and_answer_once() -> None:
    rec = Recorder()
    handler = _handler(rec)
    _handle(handler, b'{"id":"m","cmd":"set_mode","mode":"performance"}')
    _handle(handler, b'{"id":"p","cmd":"ping"}')
    _handle(handler, b'{"id":"r","cmd":"rollback"}')
    assert [(e.id, e.ok) for e in rec.events] == [("m", True), ("p", True), ("r", True)]
    assert rec.modes == [Mode.PERFORMANCE] and rec.beats == 1 and rec.states == 1
    assert rec.events[0].detail == {"mode": "performance", "resolution": 160}


def test_home_assistants_mode_topic_runs_the_same_set_mode_as_the_control_topic() -> None:
    via_control, via_ha = Recorder(), Recorder()
    _handle(_handler(via_control), b'{"cmd":"set_mode","mode":"performance"}')
    _handle(_handler(via_ha), b"performance", topic=HA_MODE)
    assert via_ha.modes == via_control.modes == [Mode.PERFORMANCE] and via_ha.states == via_control.states == 1
    answers = [[e.model_dump(exclude={"ts"}) for e in rec.events] for rec in (via_ha, via_control)]
    expected = {"id": None, "cmd": "set_mode", "ok": True, "error": None}
    assert answers[0] == answers[1] == [expected | {"detail": {"mode": "performance", "resolution": 160}}]


@pytest.mark.parametrize(
    "payload",
    [
        b'{"cmd":"rollback"}',
        b'{"cmd":"update_model","url":"https://h/x","sha256":"' + b"a" * 64 + b'","version":"1"}',
        b'{"cmd":"set_mode","mode":"high"}',  # even set_mode: this topic carries a mode name, nothing else
        b'{"cmd":"snapshot"}',
        b"warp",
        b"High",
        b" high",
        b"high\n",
        b"",
        b"\xff",
    ],
)
def test_anything_but_a_mode_on_home_assistants_topic_is_refused_with_an_event(payload: bytes) -> None:
    rec = Recorder()
    handler = _handler(rec)
    _handle(handler, payload, topic=HA_MODE)
    (ev,) = rec.events
    assert not ev.ok and "only a mode name" in (ev.error or "") and "control topic" in (ev.error or "")
    assert rec.modes == [] and rec.submitted == [] and rec.states == 0 and rec.beats == 0
    assert handler.routes[HA_MODE].rejected == 1 and handler.routes[CONTROL].rejected == 0


def test_the_two_routes_have_their_own_rate_limits() -> None:
    rec = Recorder()
    handler = _handler(rec, rate=1.0)
    for _ in range(5):
        _handle(handler, b"auto", topic=HA_MODE)
    _handle(handler, b'{"cmd":"ping"}')
    assert rec.modes == [Mode.AUTO] * 2 and rec.beats == 1 and handler.routes[HA_MODE].limited == 3


def test_a_retained_mode_from_home_assistant_is_not_executed_either() -> None:
    rec = Recorder()
    _handle(_handler(rec), b"high", retained=True, topic=HA_MODE)
    (ev,) = rec.events
    assert not ev.ok and ev.cmd == "set_mode" and f"-t {HA_MODE}" in (ev.error or "") and rec.modes == []
