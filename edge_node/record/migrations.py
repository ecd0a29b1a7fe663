"""The history schema, as numbered migrations per database (docs/history.md documents it for SQL users).

A migration is applied once, in order, and its number is written to ``schema_migrations`` in the same
transaction; a database newer than this program is refused rather than written wrongly. In PostgreSQL every
table is partitioned by day on its time, ``ts`` (a detection's ``started``): ``<table>_pYYYYMMDD``, made by the
writer as days come, so retention drops whole partitions; SQLite keeps one table each and deletes old rows.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PARTITIONED", "POSTGRES", "SQLITE", "Migration", "latest"]

PARTITIONED = ("predictions", "heartbeats", "events", "states", "ota", "statuses", "detections")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


SQLITE: tuple[Migration, ...] = (
    Migration(
        1,
        "initial",
        (
            """CREATE TABLE predictions (
                ts REAL NOT NULL, node TEXT NOT NULL, seq INTEGER NOT NULL, label TEXT NOT NULL,
                class_id INTEGER, confidence REAL, fps REAL, latency_ms REAL, inference_ms REAL,
                resolution INTEGER, mode TEXT, model_version TEXT, received REAL NOT NULL,
                UNIQUE (node, seq, ts))""",
            # label too: a node's label counts are read from the index alone
            "CREATE INDEX predictions_node_ts ON predictions (node, ts, label)",
            "CREATE INDEX predictions_ts ON predictions (ts)",
            """CREATE TABLE heartbeats (
                ts REAL NOT NULL, node TEXT NOT NULL, uptime_s REAL, fps REAL, inference_ms REAL,
                cpu_percent REAL, cpu_temp_c REAL, rss_mb REAL, frames_dropped INTEGER, offline_s REAL,
                model_version TEXT, mode TEXT, resolution INTEGER, camera TEXT, pipeline TEXT,
                received REAL NOT NULL, UNIQUE (node, ts))""",
            "CREATE INDEX heartbeats_ts ON heartbeats (ts)",
            """CREATE TABLE events (
                ts REAL NOT NULL, node TEXT NOT NULL, key TEXT NOT NULL, id TEXT, cmd TEXT NOT NULL,
                ok INTEGER NOT NULL, error TEXT, detail TEXT, received REAL NOT NULL, UNIQUE (node, key, ts))""",
            "CREATE INDEX events_ts ON events (ts)",
            """CREATE TABLE states (
                ts REAL NOT NULL, node TEXT NOT NULL, mode TEXT, resolution INTEGER, model_version TEXT,
                payload TEXT NOT NULL, received REAL NOT NULL, UNIQUE (node, ts))""",
            """CREATE TABLE ota (
                ts REAL NOT NULL, node TEXT NOT NULL, phase TEXT NOT NULL, version TEXT, progress REAL,
                error TEXT, id TEXT, received REAL NOT NULL, UNIQUE (node, ts, phase))""",
            """CREATE TABLE statuses (
                ts REAL NOT NULL, node TEXT NOT NULL, online INTEGER NOT NULL, received REAL NOT NULL)""",
            "CREATE INDEX statuses_node_ts ON statuses (node, ts)",
        ),
    ),
    Migration(
        2,
        "detections",
        (
            # one row per detection: its start makes it, its end completes it (rows.DETECTION_UPSERT)
            """CREATE TABLE detections (
                started REAL NOT NULL, node TEXT NOT NULL, id TEXT NOT NULL, rule TEXT NOT NULL, label TEXT,
                ended REAL, duration_s REAL, frames INTEGER, peak_confidence REAL, mean_confidence REAL,
                best_ts REAL, reason TEXT, snapshot INTEGER, received REAL NOT NULL, UNIQUE (node, id, started))""",
            "CREATE INDEX detections_started ON detections (started)",
        ),
    ),
)

POSTGRES: tuple[Migration, ...] = (
    Migration(
        1,
        "initial",
        (
            """CREATE TABLE predictions (
                ts timestamptz NOT NULL, node text NOT NULL, seq bigint NOT NULL, label text NOT NULL,
                class_id integer, confidence real, fps real, latency_ms real, inference_ms real,
                resolution integer, mode text, model_version text, received timestamptz NOT NULL,
                UNIQUE (node, seq, ts)) PARTITION BY RANGE (ts)""",
            # INCLUDE label: a node's label counts are an index-only scan
            "CREATE INDEX predictions_node_ts ON predictions (node, ts) INCLUDE (label)",
            "CREATE INDEX predictions_ts ON predictions (ts)",
            """CREATE TABLE heartbeats (
                ts timestamptz NOT NULL, node text NOT NULL, uptime_s real, fps real, inference_ms real,
                cpu_percent real, cpu_temp_c real, rss_mb real, frames_dropped bigint, offline_s real,
                model_version text, mode text, resolution integer, camera text, pipeline text,
                received timestamptz NOT NULL, UNIQUE (node, ts)) PARTITION BY RANGE (ts)""",
            "CREATE INDEX heartbeats_ts ON heartbeats (ts)",
            """CREATE TABLE events (
                ts timestamptz NOT NULL, node text NOT NULL, key text NOT NULL, id text, cmd text NOT NULL,
                ok boolean NOT NULL, error text, detail jsonb, received timestamptz NOT NULL,
                UNIQUE (node, key, ts)) PARTITION BY RANGE (ts)""",
            "CREATE INDEX events_ts ON events (ts)",
            """CREATE TABLE states (
                ts timestamptz NOT NULL, node text NOT NULL, mode text, resolution integer, model_version text,
                payload jsonb NOT NULL, received timestamptz NOT NULL, UNIQUE (node, ts)) PARTITION BY RANGE (ts)""",
            """CREATE TABLE ota (
                ts timestamptz NOT NULL, node text NOT NULL, phase text NOT NULL, version text, progress real,
                error text, id text, received timestamptz NOT NULL, UNIQUE (node, ts, phase))
                PARTITION BY RANGE (ts)""",
            """CREATE TABLE statuses (
                ts timestamptz NOT NULL, node text NOT NULL, online boolean NOT NULL,
                received timestamptz NOT NULL) PARTITION BY RANGE (ts)""",
            "CREATE INDEX statuses_node_ts ON statuses (node, ts)",
        ),
    ),
    Migration(
        2,
        "detections",
        (
            # partitioned by the detection's start, which its end carries too: both land in one partition
            """CREATE TABLE detections (
                started timestamptz NOT NULL, node text NOT NULL, id text NOT NULL, rule text NOT NULL, label text,
                ended timestamptz, duration_s float8, frames integer, peak_confidence float8,
                mean_confidence float8, best_ts timestamptz, reason text, snapshot boolean,
                received timestamptz NOT NULL, UNIQUE (node, id, started)) PARTITION BY RANGE (started)""",
            "CREATE INDEX detections_started ON detections (started)",
        ),
    ),
)


def latest(migrations: tuple[Migration, ...]) -> int:
    return migrations[-1].version
