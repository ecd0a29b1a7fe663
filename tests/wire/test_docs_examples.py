"""The payload examples in docs/mqtt-api.md are real: each one validates against the wire model it documents."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel

from edge_node.errors import CommandError
from edge_node.wire import (
    Detection,
    Event,
    Heartbeat,
    NodeState,
    OtaStatus,
    Prediction,
    parse_command,
    parse_mode_select,
)
from tests.support.paths import REPO

DOC = REPO / "docs" / "mqtt-api.md"
HA_MODE = "ha/mode: Home Assistant's select"
MODELS: dict[str, type[BaseModel]] = {
    "predictions": Prediction,
    "heartbeat": Heartbeat,
    "state": NodeState,
    "events": Event,
    "ota": OtaStatus,
    "snapshot": Event,
    "detections": Detection,
    HA_MODE: Event,
}


def _sections() -> dict[str, str]:
    parts = re.split(r"^## (.+)$", DOC.read_text(), flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def _examples() -> list[tuple[str, str]]:
    found = []
    for title, body in _sections().items():
        for block in re.findall(r"```json\n(.*?)```", body, flags=re.S):
            found.append((title, block))
    return found


def test_every_documented_topic_has_an_example() -> None:
    assert {title for title, _ in _examples()} == set(MODELS)


@pytest.mark.parametrize(("title", "block"), _examples(), ids=[f"{t}-{i}" for i, (t, _) in enumerate(_examples())])
def test_a_documented_payload_validates(title: str, block: str) -> None:
    MODELS[title].model_validate_json(block)  # extra="forbid": a renamed or removed field fails here


def test_documented_commands_parse() -> None:
    body = _sections()["control: commands"]
    payloads = re.findall(r"-m '(\{.*?\})'", body)
    assert payloads
    for payload in payloads:
        parse_command(payload.encode())


def test_documented_home_assistant_mode_examples_are_real() -> None:
    body = _sections()[HA_MODE]
    modes = re.findall(r"-m (\w+)$", body, flags=re.M)
    assert modes and all(parse_mode_select(m.encode()).mode == m for m in modes)
    (block,) = re.findall(r"```json\n(.*?)```", body, flags=re.S)
    refused = Event.model_validate_json(block)
    with pytest.raises(CommandError) as info:
        parse_mode_select(b'{"cmd": "rollback"}')
    assert refused.error == str(info.value)
