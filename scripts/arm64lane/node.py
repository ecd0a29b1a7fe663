"""Run ``edge-node run`` in the emulated root against a mosquitto on the host, and compare its labels with x86's.

The node starts from the env file the Ansible role wrote (demo camera, factory bundle, mode ``high``), with
the broker, node id and a fresh state directory per emulated CPU on top (the node remembers its device choice
by the CPU it reads in /proc/cpuinfo, which under qemu-user is the host's: a shared state directory would
carry one core's decision over to the other). It first checks the INT8 files on the bundle's reference set
and chooses what serves (the gate decision, published in its retained state), then predicts; the lane stops
it ``seconds`` after the first prediction.

x86's labels for the five demo photos come from the same file (runtime, precision, resolution) run here
through the node's own preprocessing; the node's published labels must be those, and all of them. Under
emulation a frame takes seconds (tens of seconds on a loaded machine), so the lane raises the node's stall
timeout (a real Pi classifies a frame in tens of milliseconds) and keeps the node running past ``seconds``
until every photo was predicted, up to ``max_seconds``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EveryPhoto", "NodeRun", "judge", "mosquitto", "photo_labels", "run_node"]


@dataclass
class NodeRun:
    """What the node published: every prediction's label and what served it, its last retained state."""

    labels: list[str] = field(default_factory=list)
    served: set[tuple[str, str, int]] = field(default_factory=set)  # (runtime, precision, resolution)
    state: dict[str, object] | None = None
    first_at: float | None = None
    exit_code: int | None = None

    def as_dict(self) -> dict[str, object]:
        counts = {label: self.labels.count(label) for label in dict.fromkeys(self.labels)}
        return {"predictions": len(self.labels), "labels": counts, "served": sorted(self.served),
                "state": self.state, "exit_code": self.exit_code}  # fmt: skip


def judge(run: NodeRun, expected: Mapping[str, str]) -> tuple[bool, str]:
    """Whether the node predicted every demo photo as x86 does (``expected``: photo -> label). Pure."""
    if not run.labels:
        return False, "the node published no prediction"
    want = set(expected.values())
    got = set(run.labels)
    strange = sorted(got - want)
    missing = sorted(want - got)
    if strange:
        return False, f"labels x86 never gives for these photos: {', '.join(strange)} (x86: {dict(expected)})"
    if missing:
        return False, f"no prediction for {', '.join(p for p, lab in expected.items() if lab in missing)} yet"
    return True, f"{len(run.labels)} predictions, every photo as on x86: {', '.join(sorted(want))}"


class EveryPhoto:
    """``enough`` for :func:`run_node`: every demo photo predicted. x86's labels are worked out once the node
    says which file serves (its first prediction), and kept in ``expected``."""

    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle
        self.expected: dict[str, str] = {}

    def __call__(self, run: NodeRun) -> bool:
        if not self.expected and run.served:
            precision, runtime, resolution = sorted(run.served)[0]
            self.expected.update(photo_labels(self.bundle, runtime, precision, resolution))
        return bool(self.expected) and set(self.expected.values()) <= set(run.labels)


def photo_labels(bundle: Path, runtime: str, precision: str, resolution: int) -> dict[str, str]:
    """x86's label for each demo photo with one file of ``bundle``, through the node's own code."""
    from edge_node.bundle import open_bundle
    from edge_node.capture.stills import demo_photos
    from edge_node.vision.model import Model

    model = Model(open_bundle(bundle), runtime=runtime, precision=precision)  # type: ignore[arg-type]
    variant = model.build(resolution)
    return {name: variant.infer(0, variant.preprocessor(frame), 0.0).best.label for name, frame in demo_photos()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def mosquitto(work: Path) -> Iterator[int]:
    """A mosquitto of the lane's own on a free loopback port (the root shares the host's network)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _free_port()
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start on port {port} (apt install mosquitto)") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def run_node(
    argv: list[str],
    port: int,
    node_id: str,
    *,
    seconds: float,
    start_timeout: float,
    log: Path,
    enough: Callable[[NodeRun], bool] = lambda _run: True,
    max_seconds: float = 600.0,
) -> NodeRun:
    """Start the node (``argv``: the chroot command line), watch its topics, stop it ``seconds`` after its first
    prediction once ``enough`` says so (every photo seen), ``max_seconds`` after it at the latest, or at
    ``start_timeout`` without any."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    run = NodeRun()
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            return
        with lock:
            if msg.topic.endswith("/predictions"):
                model = payload["model"]
                run.labels.append(str(payload["label"]))
                run.served.add((str(model["precision"]), str(model["runtime"]), int(payload["resolution"])))
                run.first_at = run.first_at or time.monotonic()
            elif msg.topic.endswith("/state"):
                run.state = payload

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"lane-{node_id}")
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=30)
    client.subscribe([(f"ghostpi/{node_id}/predictions", 0), (f"ghostpi/{node_id}/state", 1)])
    client.loop_start()
    started = time.monotonic()
    with log.open("w") as fh:
        # A session of its own: whatever happens here, the node's device-choice child goes with it.
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                now = time.monotonic()
                with lock:
                    first = run.first_at
                    done = first is not None and now - first >= seconds and enough(run)
                late = now - (first if first is not None else started) > (max_seconds if first else start_timeout)
                if done or late:
                    break
                time.sleep(1)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # the node publishes offline and exits cleanly
            run.exit_code = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # a child left behind
            client.loop_stop()
            client.disconnect()
    return run
