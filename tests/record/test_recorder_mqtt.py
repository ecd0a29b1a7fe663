"""``edge-node record`` processes on a real mosquitto (at MQTT 3.1.1, their default, and 5) into a fresh
PostgreSQL database and into SQLite: two recorders share one ``$share`` group with no row written twice, and QoS 1
messages sent while every recorder is down are recorded once they are back."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from edge_node.fleet.simnode import SimNode
from edge_node.wire import RecorderHeartbeat, Topics
from tests.support.brokers import Mosquitto
from tests.support.nodeproc import Collector
from tests.support.paths import run_cli
from tests.support.record_procs import RecorderProcess, sqlite_rows, wait_until

PREFIX = "ghostpi"


def _count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql.encode()).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture(params=["3.1.1", "5"])
def recorders(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Mosquitto, pg_fresh: str
) -> Iterator[list[RecorderProcess]]:
    env = {"EDGE_MQTT__HOST": "127.0.0.1", "EDGE_MQTT__PORT": str(mosquitto.port), "EDGE_RECORD__DSN": pg_fresh}
    env["EDGE_RECORD__PROTOCOL"] = request.param
    procs = [RecorderProcess(tmp_path / "rec", f"rec-{i}", env) for i in (1, 2)]
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


def _beats(bus: Collector, name: str) -> list[RecorderHeartbeat]:
    return [RecorderHeartbeat.model_validate_json(m.payload) for m in bus.on(Topics.recorder_heartbeat(PREFIX, name))]


def _wait_subscribed(bus: Collector, procs: list[RecorderProcess]) -> None:
    for p in procs:
        wait_until(lambda p=p: _beats(bus, p.name), 60, f"{p.name}'s heartbeat", p)  # type: ignore[misc]


def test_two_recorders_share_the_fleet_and_write_each_row_once(
    recorders: list[RecorderProcess], bus: Collector, pg_fresh: str
) -> None:
    for p in recorders:
        p.start()
    _wait_subscribed(bus, recorders)
    sims = [SimNode(f"n{i}", rng=random.Random(i)) for i in range(10)]
    sent = 0
    for _ in range(60):
        for sim in sims:
            bus.publish(Topics(PREFIX, sim.node_id).predictions, sim.prediction(), qos=1)
            sent += 1
        bus.publish(Topics(PREFIX, sims[0].node_id).heartbeat, sims[0].heartbeat(), qos=1)
    wait_until(lambda: _count(pg_fresh, "SELECT count(*) FROM predictions") >= sent, 60, "all rows", *recorders)
    assert _count(pg_fresh, "SELECT count(*) FROM predictions") == sent
    assert _count(pg_fresh, "SELECT count(*) FROM (SELECT DISTINCT node, seq FROM predictions) x") == sent
    assert _count(pg_fresh, "SELECT count(*) FROM heartbeats") == 60

    def shares() -> list[int] | None:
        last = [_beats(bus, p.name)[-1] for p in recorders]
        written = [b.rows_written for b in last]
        return written if sum(written) == sent + 60 else None

    written = wait_until(shares, 30, "the recorders' heartbeats to count every row", *recorders)
    assert all(w > 0 for w in written), f"one recorder got nothing: {written}"  # the $share group split the load
    assert all(_beats(bus, p.name)[-1].duplicates == 0 for p in recorders)


def test_qos1_messages_sent_while_the_recorders_are_down_are_recorded(
    recorders: list[RecorderProcess], bus: Collector, pg_fresh: str
) -> None:
    for p in recorders:
        p.start()
    _wait_subscribed(bus, recorders)
    for p in recorders:
        p.stop()
    node = Topics(PREFIX, "door")
    for i in range(40):  # stamped in 2001: beyond retention, so counted as dropped, not written
        bus.publish(node.events, json.dumps({"id": f"c{i}", "cmd": "ping", "ok": True, "ts": 1e9 + i}), qos=1)
    bus.publish(node.status, b"offline", qos=1)
    now = time.time()
    for i in range(40):
        bus.publish(node.events, json.dumps({"id": f"e{i}", "cmd": "ping", "ok": True, "ts": now + i / 100}), qos=1)
    for p in recorders:
        p.start()
    wait_until(lambda: _count(pg_fresh, "SELECT count(*) FROM events") >= 40, 60, "the queued events", *recorders)
    assert _count(pg_fresh, "SELECT count(*) FROM events") == 40
    assert _count(pg_fresh, "SELECT count(*) FROM statuses WHERE NOT online") == 1

    def dropped_old() -> int:
        beats = [_beats(bus, p.name)[-1] for p in recorders]
        return sum(b.dropped.get("out_of_range", 0) for b in beats)

    assert wait_until(lambda: dropped_old() == 40, 30, "the old events to be counted as dropped", *recorders)


def test_sqlite_by_default_and_history_answers(tmp_path: Path, mosquitto: Mosquitto, bus: Collector) -> None:
    env = {"EDGE_MQTT__HOST": "127.0.0.1", "EDGE_MQTT__PORT": str(mosquitto.port)}
    rec = RecorderProcess(tmp_path / "rec", "solo", env)
    rec.start()
    try:
        _wait_subscribed(bus, [rec])
        sim = SimNode("porch", rng=random.Random(3))
        t = Topics(PREFIX, "porch")
        bus.publish(t.status, b"online")
        for _ in range(30):
            bus.publish(t.predictions, sim.prediction(), qos=1)
        bus.publish(t.heartbeat, sim.heartbeat(), qos=1)
        db = tmp_path / "rec" / "state" / "history.db"

        def answered() -> dict[str, object] | None:
            out = run_cli("history", "--since", "10m", "--node", "porch", "--json", env=_cli_env(rec))
            assert out.returncode == 0, out.stderr
            report = json.loads(out.stdout)
            return report if sum(x["count"] for x in report["labels"]) == 30 and report["series"] else None

        report = wait_until(answered, 60, "history to show the 30 predictions", rec)
        assert db.exists()
        assert report["spans"] and report["spans"][0]["online"] is True
        table = run_cli("history", "--since", "10m", env=_cli_env(rec))
        assert table.returncode == 0 and "porch" in table.stdout and "Labels" in table.stdout, table.stderr
    finally:
        rec.stop()


def test_the_recorder_fails_over_along_the_server_list_and_comes_back_after_a_broker_restart(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The first server named is down: the recorder goes on to the next; when that one restarts (with no
    persistence, so no session), the recorder connects and subscribes again and records what follows."""
    from tests.support.brokers import free_port

    hosts = f"127.0.0.1:{free_port()},127.0.0.1:{mosquitto.port}"
    env = {"EDGE_MQTT__HOSTS": hosts, "EDGE_MQTT__RECONNECT_MIN": "0.2", "EDGE_MQTT__RECONNECT_MAX": "1"}
    rec = RecorderProcess(tmp_path / "rec", "solo", env).start()
    db = tmp_path / "rec" / "state" / "history.db"
    sim = SimNode("gate", rng=random.Random(5))
    try:
        for round_ in (1, 2):
            bus = Collector(mosquitto.port)
            try:
                _wait_subscribed(bus, [rec])
                for _ in range(20):
                    bus.publish(Topics(PREFIX, "gate").predictions, sim.prediction(), qos=1)
                want = 20 * round_
                wait_until(lambda: sqlite_rows(db, "predictions") >= want, 60, "the rows", rec)  # noqa: B023
            finally:
                bus.close()
            if round_ == 1:
                mosquitto.restart(downtime=1.0)
        assert sqlite_rows(db, "predictions") == 40
        assert "recording from MQTT" in rec.log() and rec.log().count("recording from MQTT") >= 2, rec.log()[-3000:]
    finally:
        rec.stop()


def _cli_env(rec: RecorderProcess) -> dict[str, str]:
    from tests.support.paths import clean_env

    return clean_env(**{k: v for k, v in rec.settings.items() if k in ("EDGE_STATE_DIR", "EDGE_RECORD__DSN")})


def test_history_without_a_database_says_what_to_do(tmp_path: Path) -> None:
    from tests.support.paths import clean_env

    out = run_cli("history", env=clean_env(EDGE_STATE_DIR=str(tmp_path)))
    assert out.returncode == 2 and "run `edge-node record` first" in out.stderr


def _waiting_on_a_lock(dsn: str) -> int:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    return _count(dsn, sql)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_recorder_killed_before_its_commit_loses_no_qos1_message(
    tmp_path: Path, mosquitto: Mosquitto, bus: Collector, pg_fresh: str, protocol: str
) -> None:
    """A QoS 1 message is acknowledged to the broker only once its row is committed. Here the commit is held
    on a table lock while the recorder is killed: the broker still owns the messages and sends them again to
    the recorder's session when it is back. (Acknowledged on receipt, as aiomqtt does by itself, they were
    lost.)"""
    env = {"EDGE_MQTT__HOST": "127.0.0.1", "EDGE_MQTT__PORT": str(mosquitto.port), "EDGE_RECORD__DSN": pg_fresh}
    env["EDGE_RECORD__PROTOCOL"] = protocol
    rec = RecorderProcess(tmp_path / "rec", "solo", env).start()
    try:
        _wait_subscribed(bus, [rec])
        node, now = Topics(PREFIX, "door"), time.time()
        with psycopg.connect(pg_fresh) as holder:
            holder.execute(b"LOCK TABLE events IN ACCESS EXCLUSIVE MODE")  # held until the rollback below
            for i in range(5):
                bus.publish(node.events, json.dumps({"id": f"k{i}", "cmd": "ping", "ok": True, "ts": now + i}), qos=1)
            wait_until(lambda: _waiting_on_a_lock(pg_fresh), 30, "the recorder's commit to wait on the lock", rec)
            rec.kill()
            holder.rollback()
        assert _count(pg_fresh, "SELECT count(*) FROM events") == 0
        rec.start()  # the same name: the same client id, so the same session on the broker
        wait_until(lambda: _count(pg_fresh, "SELECT count(*) FROM events") >= 5, 30, "the 5 events", rec)
        assert _count(pg_fresh, "SELECT count(*) FROM events") == 5
    finally:
        rec.stop()


def test_qos1_messages_a_full_queue_turned_away_are_sent_again_once_it_has_room(
    tmp_path: Path, mosquitto: Mosquitto, bus: Collector, pg_fresh: str
) -> None:
    """The database stalls (a table lock), predictions fill the writer's queue, and QoS 1 events arrive: they are
    left unacknowledged. An MQTT broker sends those again only to a new connection of the session, so once the
    queue has room the recorder connects again and records them. (Before, they waited for the next network
    failure or restart, and held the broker's in-flight window meanwhile.)"""
    env = {"EDGE_MQTT__HOST": "127.0.0.1", "EDGE_MQTT__PORT": str(mosquitto.port), "EDGE_RECORD__DSN": pg_fresh}
    env["EDGE_RECORD__MAX_QUEUE"] = "100"
    rec = RecorderProcess(tmp_path / "rec", "solo", env).start()
    node, now = Topics(PREFIX, "door"), time.time()
    sim = SimNode("door", rng=random.Random(7))
    try:
        _wait_subscribed(bus, [rec])
        with psycopg.connect(pg_fresh) as holder:
            holder.execute(b"LOCK TABLE events IN ACCESS EXCLUSIVE MODE")  # held until the rollback below
            bus.publish(node.events, json.dumps({"id": "first", "cmd": "ping", "ok": True, "ts": now}), qos=1)
            wait_until(lambda: _waiting_on_a_lock(pg_fresh), 30, "the recorder's commit to wait on the lock", rec)
            for _ in range(150):
                bus.publish(node.predictions, sim.prediction(), qos=0)
            wait_until(lambda: _beats(bus, "solo")[-1].queued >= 100, 30, "a full queue", rec)
            for i in range(10):
                bus.publish(node.events, json.dumps({"id": f"e{i}", "cmd": "ping", "ok": True, "ts": now + i}), qos=1)
            wait_until(lambda: _beats(bus, "solo")[-1].dropped.get("deferred", 0) >= 10, 30, "deferred events", rec)
            holder.rollback()
        wait_until(lambda: _count(pg_fresh, "SELECT count(*) FROM events") >= 11, 60, "all 11 events", rec)
        assert _count(pg_fresh, "SELECT count(*) FROM events") == 11
        assert "connecting again so that the broker sends them again" in rec.log()
    finally:
        rec.stop()
