"""A simulated fleet on a 3-server NATS cluster, one server killed with SIGKILL in the middle: what it costs.

Starts three ``nats-server`` processes on loopback (the Ansible role's templates, tests/support/nats.py), then
``edge-node simulate`` in ``--procs`` processes sharing ``--nodes`` (each node with its own MQTT connection and
``EDGE_MQTT__HOSTS`` naming all three servers), and an observer (this process) subscribed on server 1 to every
prediction, QoS 1 event and status. ``--kill-after`` seconds after every node is online it kills server 2, then
runs on to ``--duration`` and stops the simulators cleanly. Reported:

- ``back_s``: from the kill until every node is connected again (the simulators' ``progress`` lines), and until
  the observer has seen a prediction from every node after the kill;
- QoS 1 events: acknowledged by the cluster but never received by the observer (must be 0), and the ones still
  queued when the simulators stopped;
- predictions (QoS 0): not made while a node was away from every server (rate x time away), and sent but not
  received (lost with the dead server, or dropped by a stalled one);
- CPU (% of one core, averaged over the run) and peak RSS of each server, each simulator and the observer.

    PYTHONPATH=. .venv/bin/python -m bench.fleet_scale --nodes 2000 --procs 2 --kill-after 60 --duration 120
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.fleet_procs import Simulator, proc_cpu_seconds
from tests.support.nats import NatsCluster
from tests.support.paths import clean_env


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


_SEQ = re.compile(rb'"seq":\s*(\d+)')
_TICK = re.compile(rb'"id":\s*"tick-(\d+)"')


def _gaps(seqs: dict[str, set[int]]) -> int:
    """Numbers missing below each node's highest: made (or acknowledged) but never received."""
    return sum(max(got) - min(got) + 1 - len(got) for got in seqs.values() if got)


class Observer:
    """Counts what reaches a subscriber on a surviving server; paho's thread does only counting.

    Predictions carry a per-node ``seq`` and the simulators' QoS 1 events a per-node ``tick-N`` id, so a gap
    in either is a message that was made and lost on the way (the simulator's own counts cannot tell: a publish
    cut off by a dying connection may or may not have left the socket)."""

    def __init__(self, port: int) -> None:
        self.predictions = 0
        self.predicting_since: dict[str, float] = {}  # node -> first prediction after ``mark``
        self.prediction_seqs: dict[str, set[int]] = {}
        self.tick_seqs: dict[str, set[int]] = {}
        self.events: set[tuple[str, str]] = set()
        self.event_copies = 0
        self.mark = float("inf")
        self.subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-observer")
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [("ghostpi/+/predictions", 0), ("ghostpi/+/events", 1), ("ghostpi/+/status", 1)]
        )
        self._client.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port, keepalive=30)
        self._client.loop_start()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        node, leaf = msg.topic.split("/")[1:3]
        if leaf == "predictions":
            self.predictions += 1
            if node not in self.predicting_since and time.monotonic() >= self.mark:
                self.predicting_since[node] = time.monotonic()
            if seq := _SEQ.search(msg.payload):
                self.prediction_seqs.setdefault(node, set()).add(int(seq.group(1)))
        elif leaf == "events":
            self.event_copies += 1
            if tick := _TICK.search(msg.payload):
                self.tick_seqs.setdefault(node, set()).add(int(tick.group(1)))
                self.events.add((node, tick.group(1).decode()))

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class Sampler:
    """CPU seconds and peak RSS of named processes, sampled on a thread."""

    def __init__(self, pids: dict[str, int], every: float = 2.0) -> None:
        self.pids = pids
        self.start = {name: proc_cpu_seconds(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0.0)
        self.t0 = time.monotonic()
        self.last = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            for name, pid in self.pids.items():
                try:
                    self.last[name] = proc_cpu_seconds(pid)
                    self.peak[name] = max(self.peak[name], _rss_mb(pid))
                except (FileNotFoundError, ProcessLookupError):
                    continue  # the killed server

    def stop(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join()
        wall = time.monotonic() - self.t0
        return {
            name: {
                "cpu_percent": round(100 * (self.last[name] - self.start[name]) / wall, 1),
                "peak_rss_mb": round(self.peak[name], 1),
            }
            for name in self.pids
        }


def _milestones(timeline: list[tuple[float, int]], nodes: int) -> dict[str, float | None]:
    """Seconds after the kill until the fewest connected, then half, 90 % and all of those lost were back."""
    if not timeline:
        return {}
    low_at, low = min(timeline, key=lambda point: point[1])
    out: dict[str, float | None] = {"fewest_connected": low, "fewest_at_s": low_at}
    for share in (0.5, 0.9, 1.0):
        target = low + share * (nodes - low)
        out[f"{int(share * 100)}%_back_s"] = next((t for t, n in timeline if t >= low_at and n >= target), None)
    return out


def _monitor_once(hosts: str) -> dict[str, Any]:
    """``edge-node monitor --once --json --no-predictions`` over the server list: what it saw, its wall and CPU."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "edge_node", "monitor", "--once", "--json", "--no-predictions", "--timeout", "60"],
        env=clean_env(EDGE_MQTT__HOSTS=hosts, EDGE_MQTT__PROTOCOL="3.1.1"),
        capture_output=True,
        timeout=180,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads(out.stdout)["summary"]
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"summary": summary, "wall_s": round(time.monotonic() - started, 1), "cpu_s": round(cpu, 1)}


def _stopped(sim: Simulator) -> dict[str, Any]:
    """The simulator's final stats, or {} when it did not stop. Its clean stop of thousands of connections can
    take a while on a loaded machine: SIGTERM is sent again every minute, three times, before SIGKILL. (A busy
    simulator used to miss the signal itself: fleet/signals.py, docs/benchmarks.md.)"""
    for _ in range(3):
        try:
            return sim.wait_event("stopped", timeout=60)
        except AssertionError:
            sim.proc.send_signal(signal.SIGTERM)
    sim.proc.kill()
    return {}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fleet-scale-"))
    cluster = NatsCluster(work / "nats").start()
    share = [args.nodes // args.procs + (i < args.nodes % args.procs) for i in range(args.procs)]
    sims: list[Simulator] = []
    observer = Observer(cluster.mqtt_ports[0])
    observer.subscribed.wait(30)
    try:
        env = {"EDGE_MQTT__HOSTS": cluster.hosts, "EDGE_MQTT__PROTOCOL": "3.1.1"}
        env |= {"EDGE_MQTT__CONNECT_TIMEOUT": str(args.connect_timeout)}
        env |= {"EDGE_MQTT__RECONNECT_MAX": str(args.reconnect_max)} if args.reconnect_max else {}
        started = time.monotonic()
        for i, count in enumerate(share):
            sim_args = [
                "--nodes", str(count), "--id-prefix", f"sim-p{i}-", "--rate", str(args.rate),
                "--heartbeat", str(args.heartbeat), "--keepalive", "30", "--progress", "1",
                "--seed", str(i), "--no-snapshots",
            ]  # fmt: skip
            sim_args += ["--events", str(args.events)] if args.events > 0 else []
            sims.append(Simulator(cluster.mqtt_ports[0], work, *sim_args, env=env))
        online = [sim.wait_event("online", timeout=args.connect_limit) for sim in sims]
        connect_s = time.monotonic() - started
        assert sum(o["nodes"] for o in online) == args.nodes, online
        pids = {f"nats-{s.name}": s.proc.pid for s in cluster.servers if s.proc is not None}
        pids |= {f"simulate-{i}": sim.proc.pid for i, sim in enumerate(sims)}
        pids["observer"] = os.getpid()
        sampler = Sampler(pids)
        print(f"{args.nodes} nodes online in {connect_s:.1f} s; killing nats s2 in {args.kill_after} s", flush=True)
        time.sleep(args.kill_after)
        cluster.kill("s2")
        killed = time.monotonic()
        observer.mark = killed + 0.5  # predictions the dead server had in flight do not count as 'back'
        connected: dict[int, int] = {}
        lost: dict[int, int] = {}
        back_s: float | None = None
        timeline: list[tuple[float, int]] = []  # (seconds after the kill, nodes connected)
        end = killed + max(args.duration - args.kill_after, 1.0)
        while time.monotonic() < end:
            for i, sim in enumerate(sims):
                while not sim.events.empty():
                    event = sim.events.get()
                    if event["event"] == "progress":
                        connected[i], lost[i] = event["connected"], event["lost"]
            if connected and (not timeline or timeline[-1][1] != sum(connected.values())):
                timeline.append((round(time.monotonic() - killed, 1), sum(connected.values())))
            if back_s is None and sum(lost.values()) > 0 and sum(connected.values()) == args.nodes:
                back_s = time.monotonic() - killed
                print(f"every node connected again {back_s:.1f} s after the kill", flush=True)
            time.sleep(0.2)
        seen_back = sorted(observer.predicting_since.values())
        usage = sampler.stop()
        print(json.dumps({"back_s": back_s, "timeline": timeline[-20:], "usage": usage}), file=sys.stderr, flush=True)
        monitor = _monitor_once(cluster.hosts) if args.monitor else None
        for sim in sims:
            sim.proc.send_signal(signal.SIGTERM)
        stopped = [_stopped(sim) for sim in sims]
        time.sleep(2)  # the last QoS 1 events reach the observer
        totals = Counter[str]()
        for s in stopped:
            keys = ("predictions", "events_made", "events_acked", "lost", "failovers", "dropped_offline")
            totals.update({k: s.get(k, 0) for k in keys})
        return {
            "nodes": args.nodes,
            "procs": args.procs,
            "rate_hz": args.rate,
            "connect_s": round(connect_s, 1),
            "connect_timeout_s": args.connect_timeout,
            "reconnect_max_s": args.reconnect_max,
            "kill_after_s": args.kill_after,
            "duration_s": args.duration,
            "connections_lost": totals["lost"],
            "failovers": totals["failovers"],
            "back_s": None if back_s is None else round(back_s, 1),
            "all_predicting_again_s": round(seen_back[-1] - killed, 1) if len(seen_back) == args.nodes else None,
            "nodes_predicting_again": len(seen_back),
            "reconnect_timeline": _milestones(timeline, args.nodes),
            "simulators_not_stopped": sum(not s for s in stopped),
            "qos1_made": totals["events_made"],
            "qos1_acked": totals["events_acked"],
            "qos1_unique_received": len(observer.events),
            "qos1_lost": _gaps(observer.tick_seqs),
            "qos1_duplicates": observer.event_copies - len(observer.events),
            "predictions_sent": totals["predictions"],
            "predictions_received": observer.predictions,
            "predictions_lost_in_flight": _gaps(observer.prediction_seqs),
            "predictions_not_made_while_away": totals["dropped_offline"],
            "monitor_no_predictions": monitor,
            "usage": usage,
            "load_average": os.getloadavg(),
        }
    finally:
        observer.close()
        for sim in sims:
            sim.close()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--procs", type=int, default=2, help="simulator processes sharing the nodes")
    parser.add_argument("--rate", type=float, default=1.0, help="predictions per second per node")
    parser.add_argument("--heartbeat", type=float, default=10.0)
    parser.add_argument("--events", type=float, default=10.0, help="seconds between QoS 1 events per node (0: none)")
    parser.add_argument("--kill-after", type=float, default=60.0, help="seconds after every node is online")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds from online to the clean stop")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="EDGE_MQTT__CONNECT_TIMEOUT")
    parser.add_argument("--reconnect-max", type=float, help="EDGE_MQTT__RECONNECT_MAX (default: the setting's)")
    parser.add_argument("--connect-limit", type=float, default=900.0, help="seconds allowed for the first connects")
    parser.add_argument("--monitor", action="store_true", help="also time one `monitor --once --no-predictions`")
    args = parser.parse_args()
    json.dump(run(args), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
