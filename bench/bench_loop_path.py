"""The loop's share of the frame path: CPU per prediction on the event loop's thread, nothing else.

A producer thread hands a fixed Result to a ``LoopHandoff`` at ``--rate`` per second, as the pipeline's workers do;
on the loop each one is encoded as the node encodes it and sent by a real ``Link`` (QoS 0) to a private mosquitto,
with a ``mosquitto_sub`` reading. The figure is the loop thread's own CPU time (``time.thread_time``) per item, so
inference, preprocessing and the broker do not blur it. ``--compare DIR`` runs the same in another checkout's code
(say the commit before a change), interleaved round by round.

    PYTHONPATH=. .venv/bin/python -m bench.bench_loop_path [--rate 500] [--seconds 5] [--rounds 3] [--compare DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def measure(port: int, rate: float, seconds: float) -> None:
    """In the child: the code under test comes first on sys.path (PYTHONPATH)."""
    from edge_node.config import MqttConfig
    from edge_node.mqtt.link import Link
    from edge_node.node import mapping as reports
    from edge_node.node.handoff import LoopHandoff
    from edge_node.vision.model import Classification, ModelInfo, Score
    from edge_node.vision.pipeline import Result
    from edge_node.wire.domain import Mode
    from edge_node.wire.topics import Topics

    top = tuple(Score(i, f"class {i}", 0.1) for i in range(5))
    result = Result(
        1,
        time.time(),
        Classification(top, 224, 0.12, 2.9),
        301.2,
        4.6,
        Mode.HIGH,
        ModelInfo("m", "1", "int8", "litert"),
        0,
    )
    encoder = getattr(reports, "PredictionEncoder", None)  # the node's encoding, whichever this code has
    encode = encoder("bench") if encoder is not None else (lambda r: reports.prediction("bench", r).to_bytes())

    async def run() -> None:
        topics = Topics("ghostpi", "bench")

        async def on_message(topic: str, payload: bytes, retained: bool) -> None:
            return None

        connected = asyncio.Event()

        async def on_connect() -> None:
            connected.set()

        link = Link(
            MqttConfig(host="127.0.0.1", port=port),
            topics,
            client_id="bench",
            subscriptions=(),
            on_message=on_message,
            on_connect=on_connect,
        )
        task = asyncio.create_task(link.run())
        await asyncio.wait_for(connected.wait(), 30)
        count = [0]

        def deliver(item: Any) -> None:
            link.publish_fast(topics.predictions, encode(item))
            count[0] += 1

        handoff = LoopHandoff(asyncio.get_running_loop(), deliver)
        stop = threading.Event()

        def produce() -> None:
            due = time.perf_counter()
            while not stop.is_set():
                due += 1 / rate
                time.sleep(max(0.0, due - time.perf_counter()))
                handoff.put(result)

        producer = threading.Thread(target=produce)
        producer.start()
        await asyncio.sleep(1.0)
        cpu0, n0 = time.thread_time(), count[0]
        await asyncio.sleep(seconds)
        cpu1, n1 = time.thread_time(), count[0]
        stop.set()
        producer.join()
        print(f"{(n1 - n0) / seconds:.1f} {1e6 * (cpu1 - cpu0) / (n1 - n0):.1f}")
        await link.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="predictions per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", type=Path, default=None, metavar="DIR", help="also run this checkout's code")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        measure(args.child, args.rate, args.seconds)
        return 0
    sys.path.insert(0, str(ROOT))
    from tests.support.brokers import Mosquitto

    roots = {"this": ROOT} if args.compare is None else {"this": ROOT, "compared": args.compare.resolve()}
    results: dict[str, list[float]] = {name: [] for name in roots}
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto").start()
        sub = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-t", "#"], stdout=subprocess.DEVNULL)
        try:
            for i in range(args.rounds):
                for name, root in roots.items():
                    env = {**os.environ, "PYTHONPATH": str(root)}
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(broker.port)]
                    cmd += ["--rate", str(args.rate), "--seconds", str(args.seconds)]
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.split()
                    rate, us = float(out[0]), float(out[1])
                    results[name].append(us)
                    print(f"round {i + 1}: {name:8} {rate:6.1f}/s, loop CPU {us:6.1f} us per prediction ({root})")
        finally:
            sub.terminate()
            broker.stop()
    for name, values in results.items():
        print(f"{name:8} median {statistics.median(values):.1f} us per prediction at {args.rate:g}/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
