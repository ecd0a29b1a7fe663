"""How fast ``edge-node monitor`` ingests fleet traffic, and what it costs in CPU.

Two loads against a private mosquitto:
  1. realistic: ``edge-node simulate --nodes N --rate HZ`` (one MQTT connection per node, as in the field);
  2. flood: one publisher process sending pre-encoded predictions for N nodes as fast as it can.
The monitor's ingest path (paho thread -> FleetView.ingest) runs in this process, so this process's CPU time
is the monitor's. Also times one snapshot (decode every node) and one rich render of it.

    PYTHONPATH=. .venv/bin/python -m bench.bench_monitor_ingest --nodes 200 --rate 10 --seconds 10
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console

from edge_node.config import MqttConfig
from edge_node.fleet.dashboard import render
from edge_node.fleet.monitor import MonitorClient
from edge_node.fleet.simnode import SimNode
from edge_node.fleet.view import FleetView
from tests.support.brokers import Mosquitto
from tests.support.fleet_procs import Simulator, proc_cpu_seconds


def _flood(port: int, nodes: int, seconds: float, counter: Synchronized[int]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-flood")
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    payloads = [(f"ghostpi/flood-{i:04d}/predictions", SimNode(f"flood-{i:04d}").prediction()) for i in range(nodes)]
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for topic, payload in payloads:
            client.publish(topic, payload, qos=0)
        sent += len(payloads)
    client.loop_stop()
    client.disconnect()
    counter.value = sent


def _measure(view: FleetView, seconds: float) -> tuple[float, float]:
    """Messages/s ingested and CPU % of this process over ``seconds``."""
    count0, wall0, cpu0 = view.messages, time.monotonic(), time.process_time()
    time.sleep(seconds)
    count1, wall1, cpu1 = view.messages, time.monotonic(), time.process_time()
    return (count1 - count0) / (wall1 - wall0), 100.0 * (cpu1 - cpu0) / (wall1 - wall0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto").start()
        try:
            cfg = MqttConfig(host="127.0.0.1", port=broker.port)
            view = FleetView("ghostpi")
            monitor = MonitorClient(cfg, view)
            monitor.start()

            sim = Simulator(broker.port, Path(tmp), "--nodes", str(args.nodes), "--rate", str(args.rate))
            sim.wait_event("online", timeout=60)
            time.sleep(2.0)  # let every node's phase settle
            sim_cpu0 = proc_cpu_seconds(sim.proc.pid)
            rate, cpu = _measure(view, args.seconds)
            sim_cpu = 100.0 * (proc_cpu_seconds(sim.proc.pid) - sim_cpu0) / args.seconds
            expected = args.nodes * args.rate
            print(f"realistic  nodes={args.nodes} rate={args.rate}/s  offered={expected:.0f} msg/s")
            print(f"           ingested={rate:.0f} msg/s ({rate / expected:.3f} of offered)  monitor CPU={cpu:.1f}%")
            print(f"           CPU per message = {cpu / 100 / rate * 1e6:.1f} us;  simulate CPU={sim_cpu:.1f}%")

            console = Console(file=open(os.devnull, "w"), width=160)  # noqa: SIM115
            decode, draw = [], []
            for _ in range(5):  # warm: the first rich render pays one-off setup
                t0 = time.perf_counter()
                rows = view.snapshot()
                t1 = time.perf_counter()
                console.print(render(rows, prefix="ghostpi", limit=50))
                decode.append(t1 - t0)
                draw.append(time.perf_counter() - t1)
                time.sleep(0.2)
            print(f"snapshot   {len(rows)} nodes decoded in {min(decode) * 1e3:.1f} ms (best of 5), "
                  f"50-row table rendered in {min(draw) * 1e3:.1f} ms")  # fmt: skip
            sim.close()

            time.sleep(1.0)
            sent = mp.Value("q", 0)
            flooder = mp.Process(target=_flood, args=(broker.port, 1000, args.seconds + 1.0, sent))
            flooder.start()
            time.sleep(0.5)
            received0 = view.messages
            rate, cpu = _measure(view, args.seconds)
            flooder.join(30)
            time.sleep(0.5)
            total = view.messages - received0
            print(f"flood      1000 nodes, one publisher as fast as it can: sent={sent.value} received={total}")
            print(f"           ingested={rate:.0f} msg/s  monitor CPU={cpu:.1f}%  CPU per message = "
                  f"{cpu / 100 / rate * 1e6:.1f} us")  # fmt: skip
            monitor.stop()
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
