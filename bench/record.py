"""``edge-node record`` measured: write rate, lag, CPU/RSS; queries on 10 million rows; a NATS cluster run.

Parts (``--part``, several allowed):

- ``store``: no broker: ``--store-rows`` prediction payloads parsed into rows (the intake's work), then put
  through the batching writer into a fresh PostgreSQL database and into SQLite: what the database side
  sustains, apart from MQTT.

- ``write``: a private mosquitto; ``--messages`` predictions from 200 simulated node ids published (QoS 0) as
  fast as one paho client can, or at ``--rate`` per second (what a recorder sustains); ``--recorders`` (1 and
  then 2) recorders in one ``$share`` group at MQTT ``--protocol`` into a fresh PostgreSQL database and into
  SQLite. Reported: rows recorded, rows/s from the first publish to the last commit, the recorders'
  own publish-to-commit lag p50/p95 (their heartbeats), CPU (% of one core over the run) and peak RSS each.
- ``query``: a fresh PostgreSQL database filled with ``--rows`` predictions by ``generate_series`` (116 nodes at
  1 Hz for 24 h is 10,022,400 rows) plus their heartbeats every 10 s; then ``edge-node history --node X
  --since 24h`` (in process: every query of the report; and as a process, Python's start included) and the
  fleet-wide predictions per hour.
- ``cluster``: three NATS servers, ``edge-node simulate`` with ``--nodes`` nodes at 1 Hz through
  ``EDGE_MQTT__HOSTS``, two recorders (``EDGE_RECORD__NATS_SERVERS``) into a fresh PostgreSQL database, server
  s2 killed ``--kill-after`` seconds after every node is online, stopped after ``--duration`` s. Reported:
  predictions the simulators sent vs rows, (node, seq) written twice, and whether ``history --since 10m``
  answers.

    PYTHONPATH=. .venv/bin/python -m bench.record --part write query
    PYTHONPATH=. .venv/bin/python -m bench.record --part cluster --nodes 2000 --kill-after 60 --duration 150
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from bench.fleet_scale import Sampler, _stopped
from edge_node.fleet.simnode import SimNode
from edge_node.record.postgres import PostgresStore
from edge_node.record.query import History, TimeRange
from edge_node.wire import RecorderHeartbeat, Topics
from tests.support.brokers import Mosquitto
from tests.support.fleet_procs import Simulator
from tests.support.nats import NatsCluster
from tests.support.paths import clean_env
from tests.support.postgres import fresh_database
from tests.support.record_procs import RecorderProcess

PREFIX = "ghostpi"


def _flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text()
    return sorted({f for f in ("avx2", "avx512_vnni", "avx_vnni") if f" {f}" in text})


class Beats:
    """The recorders' heartbeats, latest per recorder."""

    def __init__(self, port: int) -> None:
        self.latest: dict[str, RecorderHeartbeat] = {}
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-beats-{os.getpid()}")
        self._client.on_message = self._on
        self._client.on_connect = lambda c, *_: c.subscribe(Topics.recorder_wildcard(PREFIX))
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        hb = RecorderHeartbeat.model_validate_json(msg.payload)
        self.latest[hb.recorder] = hb

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _count(dsn: str | None, db: Path | None) -> int:
    if dsn is not None:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*) FROM predictions").fetchone()
        return int(row[0]) if row else 0
    import sqlite3

    assert db is not None
    if not db.exists():
        return 0
    lite = sqlite3.connect(db, timeout=30)
    try:
        return int(lite.execute("SELECT count(*) FROM predictions").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        lite.close()


def _blast(port: int, messages: int, rate: float = 0.0) -> float:
    """Publish ``messages`` predictions (QoS 0) from 200 node ids, at ``rate`` per second if given; returns the
    seconds it took."""
    sims = [SimNode(f"b{i:03d}", rng=random.Random(i)) for i in range(200)]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-blast-{os.getpid()}")
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    t0 = time.monotonic()
    for i in range(messages):
        sim = sims[i % len(sims)]
        info = client.publish(f"{PREFIX}/{sim.node_id}/predictions", sim.prediction(), qos=0)
        if i % 2000 == 1999:
            info.wait_for_publish(30)
        if rate and i % 100 == 99 and (ahead := t0 + (i + 1) / rate - time.monotonic()) > 0:
            time.sleep(ahead)
    took = time.monotonic() - t0
    client.loop_stop()
    client.disconnect()
    return took


def write_run(
    work: Path, store: str, recorders: int, messages: int, rate: float = 0.0, protocol: str = "3.1.1"
) -> dict[str, Any]:
    broker = Mosquitto(work / f"mq-{store}-{recorders}").start()
    beats = Beats(broker.port)
    db = work / f"{store}-{recorders}" / "state" / "history.db"
    ctx = fresh_database("ghostpi_bench") if store == "postgres" else None
    dsn = ctx.__enter__() if ctx is not None else None
    procs: list[RecorderProcess] = []
    try:
        env = {"EDGE_MQTT__HOST": "127.0.0.1", "EDGE_MQTT__PORT": str(broker.port)}
        env |= {"EDGE_RECORD__DSN": dsn} if dsn else {"EDGE_RECORD__PATH": str(db)}
        env |= {"EDGE_RECORD__COMMIT_INTERVAL": "1.0", "EDGE_RECORD__HEARTBEAT_INTERVAL": "1"}
        env |= {"EDGE_RECORD__PROTOCOL": protocol}
        procs = [RecorderProcess(work / f"{store}-{recorders}", f"r{i}", env).start() for i in range(recorders)]
        deadline = time.monotonic() + 120
        while len(beats.latest) < recorders:
            assert time.monotonic() < deadline, [p.log()[-2000:] for p in procs]
            time.sleep(0.2)
        sampler = Sampler({p.name: p.proc.pid for p in procs if p.proc is not None}, every=0.5)
        t0 = time.monotonic()
        blast_s = _blast(broker.port, messages, rate)
        last, last_change, n = -1, time.monotonic(), 0
        while time.monotonic() - last_change < 5.0:
            n = _count(dsn, db)
            if n != last:
                last, last_change = n, time.monotonic()
            if n >= messages:
                break
            time.sleep(0.25)
        done = last_change if n < messages else time.monotonic()
        usage = sampler.stop()
        time.sleep(2.5)  # one more heartbeat each, with the final lags
        lags = {name: (hb.lag_p50_s, hb.lag_p95_s, hb.dropped) for name, hb in beats.latest.items()}
        return {
            "store": store,
            "recorders": recorders,
            "protocol": protocol,
            "published": messages,
            "publish_s": round(blast_s, 2),
            "offered_per_s": round(messages / blast_s),
            "rows": n,
            "rows_per_s": round(n / (done - t0)),
            "lag_p50_p95_dropped": lags,
            "usage": usage,
            "load_average": os.getloadavg(),
        }
    finally:
        for p in procs:
            p.stop()
        beats.close()
        broker.stop()
        if ctx is not None:
            ctx.__exit__(None, None, None)


_FILL = """
INSERT INTO predictions (ts, node, seq, label, class_id, confidence, fps, latency_ms, inference_ms, resolution,
                         mode, model_version, received)
SELECT to_timestamp(%(t0)s + s), 'node-' || n, s,
       (ARRAY['cat','dog','person','car','bird','nobody'])[1 + (s / 7 + n) %% 6],
       (s / 7 + n) %% 6, 0.8, 25.0, 40.0, 36.0, 224, 'high', '1.0', to_timestamp(%(t0)s + s + 0.05)
FROM generate_series(0, %(nodes)s - 1) AS n, generate_series(0, %(seconds)s - 1) AS s
"""
_FILL_HB = """
INSERT INTO heartbeats (ts, node, uptime_s, fps, inference_ms, cpu_percent, cpu_temp_c, rss_mb, frames_dropped,
                        offline_s, model_version, mode, resolution, camera, pipeline, received)
SELECT to_timestamp(%(t0)s + s), 'node-' || n, s, 25.0, 36.0, 80.0, 55 + (s %% 600) / 60.0, 120.0, 0, 0, '1.0',
       'high', 224, 'ok', 'ok', to_timestamp(%(t0)s + s)
FROM generate_series(0, %(nodes)s - 1) AS n, generate_series(0, %(seconds)s - 1, 10) AS s
"""


def store_run(work: Path, rows: int) -> list[dict[str, Any]]:
    """The recorder without a broker: payloads parsed into rows (the intake's work per message), then the
    batching writer into each store, from a full queue. What the database side sustains."""
    from edge_node.config import RecordConfig
    from edge_node.record.rows import to_row
    from edge_node.record.sqlite import SqliteStore
    from edge_node.record.writer import BatchWriter

    sims = [SimNode(f"s{i:03d}", rng=random.Random(i)) for i in range(200)]
    now = time.time()
    payloads = [(sims[i % 200].node_id, sims[i % 200].prediction(ts=now - 60 + i / rows * 60)) for i in range(rows)]
    a = time.perf_counter()
    parsed = [to_row(node, "predictions", p, now) for node, p in payloads]
    parse_s = time.perf_counter() - a
    out = []
    cfg = RecordConfig(max_queue=rows + 1, batch_rows=2000, commit_interval=0.2)
    for name in ("postgres", "sqlite"):
        ctx = fresh_database("ghostpi_bench") if name == "postgres" else None
        dsn = ctx.__enter__() if ctx is not None else None
        try:
            path = work / "store-bench.db"

            def opener(dsn: str | None = dsn, path: Path = path) -> Any:
                return PostgresStore(dsn) if dsn else SqliteStore(path)

            writer = BatchWriter(opener, cfg)
            writer.start()
            a = time.perf_counter()
            for row in parsed:
                assert row is not None
                writer.put(row)
            while writer.stats().rows_written < rows:
                time.sleep(0.05)
            took = time.perf_counter() - a
            writer.stop()
            rates = {"rows_per_s": round(rows / took), "parse_per_s": round(rows / parse_s)}
            out.append({"store": name, "rows": rows, **rates, "load_average": os.getloadavg()})
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
    return out


def query_run(rows: int, repeat: int) -> dict[str, Any]:
    seconds = 86400
    nodes = max(1, round(rows / seconds))
    t0 = int(time.time()) - seconds + 60
    with fresh_database("ghostpi_bench") as dsn:
        store = PostgresStore(dsn)
        store.ensure_days({t0 // 86400 + d for d in range(3)})
        store.close()
        started = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(_FILL.encode(), {"t0": t0, "nodes": nodes, "seconds": seconds})
            conn.execute(_FILL_HB.encode(), {"t0": t0, "nodes": nodes, "seconds": seconds})
            conn.execute(b"VACUUM ANALYZE")  # what autovacuum does to a day's partition once it is written
            (total,) = conn.execute(b"SELECT count(*) FROM predictions").fetchone() or (0,)
        fill_s = time.monotonic() - started
        store = PostgresStore(dsn)
        history = History(store)
        now = time.time()
        node_ms, hourly_ms = [], []
        for _ in range(repeat):
            a = time.perf_counter()
            report = history.report(TimeRange(now - 86400, now, "node-7"))
            node_ms.append((time.perf_counter() - a) * 1000)
            a = time.perf_counter()
            hourly = history.hourly_counts(TimeRange(now - 86400, now))
            hourly_ms.append((time.perf_counter() - a) * 1000)
        store.close()
        env = clean_env(EDGE_RECORD__DSN=dsn)
        a = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "edge_node", "history", "--node", "node-7", "--since", "24h", "--json"],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        cli_ms = (time.perf_counter() - a) * 1000
        a = time.perf_counter()
        noop = subprocess.run([sys.executable, "-c", "import edge_node.cli"], env=env, timeout=60, check=False)
        startup_ms = (time.perf_counter() - a) * 1000
        assert out.returncode == 0 and noop.returncode == 0, out.stderr
        return {
            "rows": total,
            "nodes": nodes,
            "fill_s": round(fill_s, 1),
            "node_24h_report_ms": sorted(round(x, 1) for x in node_ms),
            "node_24h_labels_total": sum(x["count"] for x in report["labels"]),
            "fleet_hourly_ms": sorted(round(x, 1) for x in hourly_ms),
            "fleet_hourly_total": sum(n for _, n in hourly),
            "cli_history_ms": round(cli_ms),
            "python_import_cli_ms": round(startup_ms),
            "load_average": os.getloadavg(),
        }


def cluster_run(work: Path, nodes: int, procs: int, kill_after: float, duration: float) -> dict[str, Any]:
    cluster = NatsCluster(work / "nats").start()
    sims: list[Simulator] = []
    recs: list[RecorderProcess] = []
    with fresh_database("ghostpi_bench") as dsn:
        try:
            nats_urls = ",".join(f"nats://127.0.0.1:{s.client_port}" for s in cluster.servers)
            renv = {"EDGE_RECORD__NATS_SERVERS": nats_urls, "EDGE_RECORD__DSN": dsn}
            renv["EDGE_RECORD__HEARTBEAT_INTERVAL"] = "5"
            env = {"EDGE_MQTT__HOSTS": cluster.hosts, "EDGE_MQTT__PROTOCOL": "3.1.1"}
            # the recorders first, so that every prediction the simulators send can be recorded
            recs = [RecorderProcess(work / "rec", f"rec-{i}", renv).start() for i in (1, 2)]
            share = [nodes // procs + (i < nodes % procs) for i in range(procs)]
            for i, count in enumerate(share):
                sim_args = [
                    "--nodes", str(count), "--id-prefix", f"sim-p{i}-", "--rate", "1", "--heartbeat", "10",
                    "--keepalive", "30", "--seed", str(i), "--no-snapshots", "--events", "10",
                ]  # fmt: skip
                sims.append(Simulator(cluster.mqtt_ports[0], work, *sim_args, env=env))
            online = [sim.wait_event("online", timeout=900) for sim in sims]
            pids = {r.name: r.proc.pid for r in recs if r.proc is not None}
            sampler = Sampler(pids)
            started = time.monotonic()
            print(f"{sum(o['nodes'] for o in online)} nodes online; recording; kill in {kill_after}s", flush=True)
            time.sleep(kill_after)
            cluster.kill("s2")
            time.sleep(max(1.0, duration - kill_after))
            usage = sampler.stop()
            for sim in sims:
                sim.proc.send_signal(signal.SIGTERM)
            stopped = [_stopped(sim) for sim in sims]
            time.sleep(5)  # the last commits
            for r in recs:
                r.stop()
            with psycopg.connect(dsn) as conn:
                rows = conn.execute(b"SELECT count(*) FROM predictions").fetchone()
                distinct = conn.execute(b"SELECT count(DISTINCT (node, seq)) FROM predictions").fetchone()
                events = conn.execute(b"SELECT count(*) FROM events").fetchone()
            out = subprocess.run(
                [sys.executable, "-m", "edge_node", "history", "--since", "10m", "--json"],
                env=clean_env(EDGE_RECORD__DSN=dsn), capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            sent = sum(s.get("predictions", 0) for s in stopped)
            n_rows = int(rows[0]) if rows else 0
            return {
                "nodes": nodes,
                "duration_s": round(time.monotonic() - started, 1),
                "predictions_sent": sent,
                "prediction_rows": n_rows,
                "recorded_percent": round(100.0 * n_rows / sent, 2) if sent else None,
                "pairs_written_twice": n_rows - (int(distinct[0]) if distinct else 0),
                "qos1_events_acked": sum(s.get("events_acked", 0) for s in stopped),
                "event_rows": int(events[0]) if events else 0,
                "history_10m_rc": out.returncode,
                "history_10m_labels": len(json.loads(out.stdout)["labels"]) if out.returncode == 0 else out.stderr,
                "usage": usage,
                "load_average": os.getloadavg(),
            }
        finally:
            for r in recs:
                r.stop()
            for sim in sims:
                sim.close()
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=["store", "write", "query", "cluster"], default=["write", "query"])
    parser.add_argument("--messages", type=int, default=100_000, help="write: predictions published per run")
    parser.add_argument("--stores", nargs="+", default=["postgres", "sqlite"])
    parser.add_argument("--rate", type=float, default=0.0, help="write: predictions/s offered (0: as fast as possible)")
    parser.add_argument("--recorders", nargs="+", type=int, default=[1, 2], help="write: recorders per run")
    parser.add_argument("--protocol", nargs="+", default=["3.1.1"], choices=["3.1.1", "5"], help="write: MQTT version")
    parser.add_argument("--store-rows", type=int, default=200_000, help="store: rows through the writer")
    parser.add_argument("--rows", type=int, default=10_000_000, help="query: predictions in the table")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--kill-after", type=float, default=60.0)
    parser.add_argument("--duration", type=float, default=150.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-record-"))
    result: dict[str, Any] = {"cpu_flags": _flags(), "cpus": os.cpu_count()}
    if "store" in args.part:
        result["store"] = store_run(work, args.store_rows)
    if "write" in args.part:
        result["write"] = [
            write_run(work, store, n, args.messages, args.rate, protocol)
            for protocol in args.protocol
            for store in args.stores
            for n in args.recorders
        ]
        for r in result["write"]:
            print(json.dumps(r), file=sys.stderr, flush=True)
    if "query" in args.part:
        result["query"] = query_run(args.rows, args.repeat)
    if "cluster" in args.part:
        result["cluster"] = cluster_run(work, args.nodes, args.procs, args.kill_after, args.duration)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
