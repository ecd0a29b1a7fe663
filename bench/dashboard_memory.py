"""How much memory does the dashboard's unit need? Its peak RSS under a simulated fleet and streaming clients.

A private mosquitto, ``edge-node simulate --nodes N --rate HZ``, ``edge-node dashboard`` and ``--clients``
readers of ``/api/stream`` (Server-Sent Events, read as fast as they come, reconnecting when dropped). After
``--seconds`` it prints the dashboard's peak RSS (VmHWM), RSS and RssAnon. It sizes the unit's
``MemoryHigh=``/``MemoryMax=`` (deploy/systemd/edge-node-dashboard.service). The charts' history fills for
``EDGE_DASHBOARD__HISTORY_SECONDS`` (600 s), so a shorter run shows less than a full history.

    PYTHONPATH=. nice -n 10 .venv/bin/python -m bench.dashboard_memory --nodes 200 --rate 10 --seconds 60
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from tests.support.brokers import Mosquitto, free_port, wait_port


def _stream(url: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                while not stop.is_set() and answer.read1(65536):
                    pass
        except OSError:
            time.sleep(0.5)


def _status(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS and RssAnon in kB."""
    fields = ("VmHWM:", "VmRSS:", "RssAnon:")
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {line.split()[0][:-1]: int(line.split()[1]) for line in lines if line.startswith(fields)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto").start()
        env = {**os.environ, "EDGE_MQTT__HOST": "127.0.0.1", "EDGE_MQTT__PORT": str(broker.port)}
        tool = [sys.executable, "-m", "edge_node"]
        port = free_port()

        def start(*command: str) -> subprocess.Popen[bytes]:
            return subprocess.Popen([*tool, *command], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        sim = start("simulate", "--nodes", str(args.nodes), "--rate", str(args.rate))
        dash = start("dashboard", "--port", str(port))
        stop = threading.Event()
        readers = [
            threading.Thread(target=_stream, args=(f"http://127.0.0.1:{port}/api/stream", stop), daemon=True)
            for _ in range(args.clients)
        ]
        try:
            wait_port(port, timeout=60)
            for reader in readers:
                reader.start()
            time.sleep(args.seconds)
            kb = _status(dash.pid)
        finally:
            stop.set()
            for proc in (dash, sim):
                proc.terminate()
                proc.wait(20)
            broker.stop()
    print(
        f"nodes={args.nodes} rate={args.rate} clients={args.clients} seconds={args.seconds:g}: "
        f"peak RSS {kb['VmHWM'] / 1024:.0f} MB, RSS {kb['VmRSS'] / 1024:.0f} MB, anon {kb['RssAnon'] / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()
