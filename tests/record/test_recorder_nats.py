"""``edge-node record`` on a real 3-server NATS cluster (tests/support/nats.py): two recorders in one queue group
and one durable consumer into a fresh PostgreSQL database. A recorder killed with SIGKILL loses no QoS 1
message (they are acknowledged only once committed) and no (node, seq) is written twice; a detection's start and
end make one row."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import psycopg
import pytest

from edge_node.fleet.simnode import SimNode
from edge_node.wire import Topics
from edge_node.wire.watch import Detection
from tests.support.nats import NatsCluster
from tests.support.nodeproc import Collector
from tests.support.record_procs import RecorderProcess, wait_until

PREFIX = "ghostpi"


def _count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql.encode()).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.slow
def test_recorders_share_a_nats_cluster_and_a_killed_one_loses_no_qos1_message(
    cluster: NatsCluster, tmp_path: Path, pg_fresh: str
) -> None:
    nats_urls = ",".join(f"nats://127.0.0.1:{s.client_port}" for s in cluster.servers)
    env = {"EDGE_RECORD__NATS_SERVERS": nats_urls, "EDGE_RECORD__DSN": pg_fresh}
    # an MQTT client (3.1.1, as on NATS) publishes like the nodes do; connecting makes the server's MQTT streams
    bus = Collector(cluster.mqtt_ports[0], topics=(Topics.recorder_wildcard(PREFIX),))
    recs = [RecorderProcess(tmp_path / "rec", f"nrec-{i}", env) for i in (1, 2)]
    try:
        for r in recs:
            r.start()
        for r in recs:
            wait_until(lambda r=r: bus.on(Topics.recorder_heartbeat(PREFIX, r.name)), 90, f"{r.name} up", r)  # type: ignore[misc]
        sims = [SimNode(f"n{i}", rng=random.Random(i)) for i in range(5)]
        events = 0
        for step in range(40):
            for sim in sims:
                bus.publish(Topics(PREFIX, sim.node_id).predictions, sim.prediction(), qos=0)
            t = Topics(PREFIX, sims[step % 5].node_id)
            bus.publish(t.events, json.dumps({"id": f"e{step}", "cmd": "ping", "ok": True, "ts": time.time()}))
            events += 1
            if step == 20:
                recs[0].kill()  # whatever it held uncommitted is delivered again to the other
        # a detection's start and end come through the same durable consumer (QoS 1), its snapshot does not
        now = round(time.time(), 3)
        start = Detection(node="n0", rule="cat", event="start", id="cat-1", ts=now, started=now - 1, label="tabby",
                          frames=3, peak_confidence=0.7, best_ts=now - 1)  # fmt: skip
        end = start.model_copy(update={"event": "end", "ended": now, "duration_s": 1.0, "reason": "gap"})
        n0 = Topics(PREFIX, "n0")
        bus.publish(n0.detections, start.to_bytes())
        bus.publish(n0.detection_snapshot(start.id), b"\xff\xd8 a JPEG")
        bus.publish(n0.detections, end.to_bytes())
        wait_until(lambda: _count(pg_fresh, "SELECT count(*) FROM events") >= events, 90, "every event", *recs)
        assert _count(pg_fresh, "SELECT count(*) FROM events") == events
        ended = "SELECT count(*) FROM detections WHERE ended IS NOT NULL AND duration_s = 1"
        wait_until(lambda: _count(pg_fresh, ended) == 1, 30, "the detection, ended", *recs)
        assert _count(pg_fresh, "SELECT count(*) FROM detections") == 1
        predictions = _count(pg_fresh, "SELECT count(*) FROM predictions")
        assert predictions > 0
        assert _count(pg_fresh, "SELECT count(*) FROM (SELECT DISTINCT node, seq FROM predictions) x") == predictions
        restarted = time.monotonic()
        recs[0].start()  # back: it joins the group again and the consumer is still there
        wait_until(lambda: bus.on(Topics.recorder_heartbeat(PREFIX, "nrec-1"), since=restarted), 60,
                   "nrec-1 back", *recs)  # fmt: skip
    finally:
        for r in recs:
            r.stop()
        bus.close()
