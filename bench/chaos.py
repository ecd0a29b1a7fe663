"""Chaos benchmark: a real node against a real mosquitto, hit with everything a fleet sees in a bad week.

In one run, against one node process (synthetic 30 fps camera, the demo model unless --bundle is given):
  1. broker restarts: kill -9 and SIGTERM alternating, 1 s down each time;
  2. hostile control payloads (invalid UTF-8, lone surrogates, deep nesting, wrong types, garbage, valid pings),
     with the rate limit raised so that every one must be answered;
  3. set_mode alternating performance/high at 5/s;
  4. over-the-air swaps, update and rollback alternating, with RSS read from /proc after each;
  5. SIGSTOP of the node for longer than 1.5 x keepalive (the broker publishes its will), then SIGCONT.

It prints one table (recovered, crashed, answered, dropped, RSS before/after, time back online). Results and the
command are recorded in docs/reliability.md. It is a benchmark, not a timed test; tests cover each defect.

    PYTHONPATH=. .venv/bin/python -m bench.chaos [--restarts 20] [--payloads 5000] [--modes 300] [--swaps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge_node.bundle.archive import pack
from edge_node.ota.download import sha256_file
from tests.support.brokers import Mosquitto
from tests.support.bundles import make_key, resigned
from tests.support.nodeproc import Collector, NodeProcess, answer_to
from tests.support.ota_http import serving

T = "ghostpi/chaos"


@dataclass
class Row:
    phase: str
    trials: int
    recovered: int = 0
    crashed: int = 0
    answered: int | None = None
    dropped: int | None = None
    rss_before: float | None = None
    rss_after: float | None = None
    back_online_s: list[float] = field(default_factory=list)

    def cells(self) -> list[str]:
        def num(v: float | None, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        back = self.back_online_s
        online = f"{min(back):.1f} / {sorted(back)[len(back) // 2]:.1f} / {max(back):.1f}" if back else "-"
        return [
            self.phase,
            str(self.trials),
            f"{self.recovered}/{self.trials}",
            str(self.crashed),
            num(self.answered, "d"),
            num(self.dropped, "d"),
            num(self.rss_before, ".1f"),
            num(self.rss_after, ".1f"),
            online,
        ]


def wait_prediction(bus: Collector, since: float, timeout: float = 60.0) -> float:
    """Seconds from ``since`` to the first prediction received after it."""
    m = bus.wait(f"{T}/predictions", since=since, timeout=timeout)
    return m.at - since


def alive(node: NodeProcess, row: Row) -> bool:
    if node.alive():
        return True
    row.crashed += 1
    return False


def broker_restarts(node: NodeProcess, broker: Mosquitto, n: int) -> Row:
    row = Row("broker restarts (kill -9 / SIGTERM)", n)
    for i in range(n):
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGKILL if i % 2 == 0 else signal.SIGTERM)
        broker.proc.wait(10)
        broker.proc = None
        time.sleep(1.0)
        broker.start()
        up = time.monotonic()
        bus = Collector(broker.port, (f"{T}/#",))
        try:
            row.back_online_s.append(wait_prediction(bus, up))
            row.recovered += 1
        except AssertionError:
            pass
        finally:
            bus.close()
        if not alive(node, row):
            break
    return row


def hostile_payloads(n: int, rng: random.Random) -> list[bytes]:
    deep = b'{"cmd":"ping","x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    kinds: list[Callable[[], bytes]] = [
        lambda: rng.randbytes(rng.randint(0, 200)),
        lambda: b'{"id":"\\ud800","cmd":"ping"}',
        lambda: b'{"cmd":"\xed\xa0\x80"}',
        lambda: deep,
        lambda: b'{"a":' * 900 + b"1" + b"}" * 900,
        lambda: json.dumps({"cmd": "set_publish", "policy": "rate", "max_hz": rng.choice(["2", True, 1e-9])}).encode(),
        lambda: json.dumps({"cmd": rng.choice(["reboot", None, 7, ["ping"]]), "id": "x"}).encode(),
        lambda: json.dumps({"cmd": "set_mode", "mode": rng.choice(["warp", 3, None])}).encode(),
        lambda: b"",
        lambda: json.dumps({"cmd": "ping", "id": f"ok{rng.random()}"}).encode(),
    ]
    return [rng.choice(kinds)() for _ in range(n)]


def hostile(node: NodeProcess, bus: Collector, n: int) -> Row:
    """Every payload must get exactly one event (the rate limit is raised for this run); predictions go on."""
    row = Row("hostile control payloads", n)
    before = len(bus.on(f"{T}/events"))
    for payload in hostile_payloads(n, random.Random(7)):
        bus.publish(f"{T}/control", payload)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(bus.on(f"{T}/events")) - before < n:
        time.sleep(0.2)
    row.answered = len(bus.on(f"{T}/events")) - before
    row.dropped = n - row.answered
    if alive(node, row):
        after = time.monotonic()
        row.back_online_s.append(wait_prediction(bus, after, 30))
        row.recovered = n
    return row


def mode_flood(node: NodeProcess, bus: Collector, n: int) -> Row:
    row = Row("set_mode at 5/s", n)
    assert node.proc is not None
    row.rss_before = node.rss_mb()
    start = time.monotonic()
    for i in range(n):
        mode = "performance" if i % 2 == 0 else "high"
        bus.publish(f"{T}/control", json.dumps({"id": f"mode{i}", "cmd": "set_mode", "mode": mode}))
        time.sleep(0.2)
    time.sleep(2.0)
    acks = {json.loads(m.payload).get("id") for m in bus.on(f"{T}/events", since=start)}
    row.answered = sum(f"mode{i}" in acks for i in range(n))
    row.dropped = n - row.answered
    if alive(node, row):
        row.rss_after = node.rss_mb()
        after = time.monotonic()
        row.back_online_s.append(wait_prediction(bus, after, 10))
        row.recovered = row.answered
    return row


def swaps(node: NodeProcess, bus: Collector, n: int, url: str, sha: str, version: str) -> Row:
    row = Row("OTA swaps (update / rollback)", n)
    assert node.proc is not None
    rss = []
    for i in range(n):
        ident = f"swap{i}"
        cmd: dict[str, object] = {"id": ident, "cmd": "rollback"}
        if i % 2 == 0:
            cmd = {"id": ident, "cmd": "update_model", "url": url, "sha256": sha, "version": version}
        bus.publish(f"{T}/control", json.dumps(cmd))
        try:
            ev = bus.wait(f"{T}/events", answer_to(ident), timeout=120)
        except AssertionError:
            alive(node, row)
            break
        ok = json.loads(ev.payload)["ok"]
        row.recovered += bool(ok)
        time.sleep(1.0)  # let the old model's last frames finish and its memory go back
        rss.append(node.rss_mb())
        if not alive(node, row):
            break
    row.answered = len(rss)
    row.rss_before, row.rss_after = (rss[0], rss[-1]) if rss else (None, None)
    print(f"  RSS after each swap (MB): {' '.join(f'{r:.0f}' for r in rss)}", flush=True)
    return row


def stop_cont(node: NodeProcess, bus: Collector, keepalive: int) -> Row:
    row = Row("SIGSTOP / SIGCONT", 1)
    assert node.proc is not None
    start = time.monotonic()
    node.proc.send_signal(signal.SIGSTOP)
    try:
        bus.wait(f"{T}/status", lambda m: m.payload == b"offline", since=start, timeout=keepalive * 3)
        row.dropped = 0
    finally:
        node.proc.send_signal(signal.SIGCONT)
    cont = time.monotonic()
    try:
        bus.wait(f"{T}/status", lambda m: m.payload == b"online", since=cont, timeout=60)
        row.back_online_s.append(wait_prediction(bus, cont, 60))
        row.recovered = 1
    except AssertionError:
        pass
    alive(node, row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="model bundle (default: the demo bundle, built on first use)")
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--payloads", type=int, default=5000)
    parser.add_argument("--modes", type=int, default=300)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--log", type=Path, help="write the node's log here")
    args = parser.parse_args()
    if args.bundle is None:
        from edge_node.modelzoo.demo import ensure_demo_bundle

        args.bundle = ensure_demo_bundle()
    keepalive = 5
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key = root / "release.pem"
        pub = make_key(key)
        factory = resigned(args.bundle, root / "factory", "chaos-1", key)
        site = root / "site"
        site.mkdir()
        update = pack(resigned(args.bundle, root / "v2", "chaos-2", key), site / "chaos-2.tar.gz")
        broker = Mosquitto(root / "mosquitto").start()
        with serving(site) as srv:
            env = {
                "EDGE_NODE_ID": "chaos",
                "EDGE_MQTT__HOST": "127.0.0.1",
                "EDGE_MQTT__PORT": str(broker.port),
                "EDGE_MQTT__KEEPALIVE": str(keepalive),
                "EDGE_MQTT__RECONNECT_MAX": "2",
                "EDGE_MQTT__CONTROL_RATE": "1000",
                "EDGE_CAMERA__SOURCE": "synthetic",
                "EDGE_CAMERA__FPS": "30",
                "EDGE_MODEL__BUNDLE": str(factory),
                "EDGE_STATE_DIR": str(root / "state"),
                "EDGE_OTA__TRUSTED_KEYS": str(pub),
                "EDGE_OTA__ALLOW_HTTP": "true",
            }
            node = NodeProcess(env, root / "node").start()
            bus = Collector(broker.port, (f"{T}/#",))
            rows: list[Row] = []
            try:
                wait_prediction(bus, 0.0, 120)
                assert node.proc is not None
                print(f"node up, RSS {node.rss_mb():.1f} MB; phases:", flush=True)
                bus.close()
                rows.append(broker_restarts(node, broker, args.restarts))
                print(" ", " | ".join(rows[-1].cells()), flush=True)
                bus = Collector(broker.port, (f"{T}/#",))
                phases: list[Callable[[], Row]] = [
                    lambda: hostile(node, bus, args.payloads),
                    lambda: mode_flood(node, bus, args.modes),
                    lambda: swaps(node, bus, args.swaps, f"{srv.url}/{update.name}", sha256_file(update), "chaos-2"),
                    lambda: stop_cont(node, bus, keepalive),
                ]
                for phase in phases:
                    rows.append(phase())
                    print(" ", " | ".join(rows[-1].cells()), flush=True)
                log = node.log()
            finally:
                bus.close()
                node.terminate(timeout=30)
                broker.stop()
    head = ["phase", "trials", "recovered", "crashed", "answered", "dropped", "RSS before MB", "RSS after MB",
            "back online s (min/median/max)"]  # fmt: skip
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")
    errors = [line for line in log.splitlines() if " ERROR " in line or line.startswith("Traceback")]
    print(f"\nnode log: {log.count('Traceback')} tracebacks, {len(errors)} ERROR lines; CPU flags: {cpu_flags()}")
    for line in errors:
        print("  " + line[:200])
    if args.log is not None:
        args.log.write_text(log)
        print(f"node log written to {args.log}")


def cpu_flags() -> str:
    out = subprocess.run(
        "grep -o -w -E 'avx512_vnni|avx_vnni|avx2' /proc/cpuinfo | sort -u | tr '\\n' ' '",
        shell=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "?"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
