"""How much memory does the node's unit need? The peak of the node's whole process tree, as its cgroup sees it.

The unit's ``MemoryHigh=``/``MemoryMax=`` bound the cgroup: the node and the short-lived child that checks and
times the runtimes (edge_node/vision/isolated.py) at the first start and before every update commits, while the
old model keeps serving and the new one is warmed up. This runs a real node (the demo model, the device choice
as a Pi would make it, a 30 fps synthetic camera, a local mosquitto, updates from a loopback HTTP server) and
samples every 20 ms, over the node and all its descendants:

  - RSS: resident memory (an upper bound of what the cgroup is charged for these processes: shared library
    pages are counted once per process here, once in the cgroup);
  - anon: ``RssAnon``, what the kernel cannot drop under pressure without swap (the OOM killer's concern);

in phases: start (until the first prediction), steady (10 s of serving), each update (command to answer) and
each rollback. It prints each phase's peak and the ratio of the update peak to the steady state.

Run: nice -n 10 .venv/bin/python -m bench.unit_memory [--updates 3] [--set EDGE_MODEL__WORKERS=2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_node.bundle.archive import pack
from edge_node.modelzoo.demo import ensure_demo_bundle
from edge_node.ota.download import sha256_file
from tests.support.brokers import Mosquitto
from tests.support.bundles import make_key, resigned
from tests.support.nodeproc import Collector, NodeProcess
from tests.support.ota_http import serving

T = "ghostpi/node-u"


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree += frontier
    return tree


def _kb(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) in kB; zeros for a process that just ended."""
    rss = anon = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("RssAnon:"):
                anon = int(line.split()[1])
    except OSError:
        pass
    return rss, anon


@dataclass
class Sampler:
    pid: int
    phase: str = "start"
    peaks: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # phase: (RSS MB, anon MB, procs)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(0.02):
            tree = _descendants(self.pid)
            sizes = [_kb(pid) for pid in tree]
            rss, anon = sum(s[0] for s in sizes) / 1024, sum(s[1] for s in sizes) / 1024
            old = self.peaks.get(self.phase, (0.0, 0.0, 0))
            self.peaks[self.phase] = (max(old[0], rss), max(old[1], anon), max(old[2], len(tree)))

    def stop(self) -> None:
        self._stop.set()


def main(updates: int, settings: dict[str, str]) -> None:
    demo = ensure_demo_bundle(progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pub = make_key(root / "release.pem")
        factory = resigned(demo, root / "factory", "u-1", root / "release.pem")
        site = root / "site"
        site.mkdir()
        versions = [f"u-{i + 2}" for i in range(updates)]
        archives = {v: pack(resigned(demo, root / v, v, root / "release.pem"), site / f"{v}.tar.gz") for v in versions}
        broker = Mosquitto(root / "mosquitto").start()
        env = {
            "EDGE_NODE_ID": "node-u",
            "EDGE_MQTT__HOST": "127.0.0.1",
            "EDGE_MQTT__PORT": str(broker.port),
            "EDGE_CAMERA__SOURCE": "synthetic",
            "EDGE_MODEL__BUNDLE": str(factory),
            "EDGE_STATE_DIR": str(root / "state"),
            "EDGE_OTA__TRUSTED_KEYS": str(pub),
            "EDGE_OTA__ALLOW_HTTP": "true",
            **settings,
        }
        bus = Collector(broker.port, (f"{T}/#",))
        node = NodeProcess(env, root / "node").start()
        assert node.proc is not None
        sampler = Sampler(node.proc.pid)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        try:
            with serving(site) as srv:
                bus.wait(f"{T}/predictions", timeout=300)
                sampler.phase = "steady"
                time.sleep(10)

                def command(phase: str, body: dict[str, object]) -> None:
                    sampler.phase = phase
                    bus.publish(f"{T}/control", json.dumps(body))
                    answer = bus.wait(f"{T}/events", lambda m: m.json().get("id") == body["id"], timeout=600).json()
                    if not answer["ok"]:
                        raise SystemExit(f"{phase} failed: {answer}\n{node.log()[-3000:]}")
                    sampler.phase = "after"
                    time.sleep(2)

                for version in versions:
                    archive = archives[version]
                    url = f"{srv.url}/{archive.name}"
                    body: dict[str, object] = {"id": version, "cmd": "update_model", "url": url, "version": version}
                    command(f"update {version}", body | {"sha256": sha256_file(archive)})
                command("rollback", {"id": "back", "cmd": "rollback"})
        finally:
            sampler.stop()
            thread.join()
            bus.close()
            node.terminate()
            broker.stop()
    state = json.loads(next(m for m in reversed(bus.messages) if m.topic == f"{T}/state").payload).get("device", {})
    print(f"serving: {state.get('runtime')} {state.get('precision')} {state.get('workers')}x{state.get('threads')}")
    print(f"{'phase':<12} {'peak RSS MB':>11} {'peak anon MB':>12} {'processes':>9}")
    for phase, (rss, anon, procs) in sampler.peaks.items():
        print(f"{phase:<12} {rss:>11.0f} {anon:>12.0f} {procs:>9}")
    steady = sampler.peaks["steady"]
    worst = max(p for name, p in sampler.peaks.items() if name.startswith(("update", "rollback")))
    print(f"update peak / steady: RSS {worst[0] / steady[0]:.2f}x, anon {worst[1] / steady[1]:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="EDGE_X=V", help="another node setting")
    args = parser.parse_args()
    main(args.updates, dict(item.split("=", 1) for item in args.set))
