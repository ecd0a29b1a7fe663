"""Run one ``update_model`` on a live node and exit: the real Updater, BundleStore, pipeline, ONNX Runtime and
synthetic camera of ``tests.support.ota_harness``, without MQTT.

tests/ota/test_ota_crash.py runs it as its own process (under strace, or to be killed):
``python -m tests.support.ota_update_once STATE FACTORY PUBKEY URL SHA256 VERSION ID [--steps FILE] [--kill-before N]``.
Prints the command's event as JSON on stdout; exits 0 when the update succeeded, 1 when it failed.

``--steps FILE`` writes one line per change to the file system below STATE (a file opened for writing, a
rename, a removal, a new folder), in the order they happen, seen through Python's audit hooks (they fire in
every thread, before the call). ``--kill-before N`` sends this process SIGKILL just before the N-th of these
changes, as ``kill -9`` would at that moment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

from edge_node.config import OtaConfig
from edge_node.messages import UpdateModel
from tests.support.ota_harness import live_node

_CHANGES = ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.truncate", "shutil.rmtree")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _watch(root: Path, steps: TextIO | None, kill_before: int | None) -> None:
    """Count every change below ``root``; log it to ``steps``; die by SIGKILL before change ``kill_before``."""
    lock = threading.Lock()
    count = [0]

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "open":
            mode, flags = args[1], args[2]
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(int(str(flags)) & _WRITE_FLAGS)
            if not writing:
                return
        elif event not in _CHANGES:
            return
        if not isinstance(args[0], str | bytes | os.PathLike):
            return
        path = Path(os.fsdecode(args[0])).absolute()
        if root not in path.parents:
            return
        with lock:
            count[0] += 1
            if count[0] == kill_before:
                os.kill(os.getpid(), signal.SIGKILL)
            if steps is not None:
                steps.write(f"{count[0]} {event} {path.relative_to(root)}\n")
                steps.flush()

    sys.addaudithook(hook)


async def _run(args: argparse.Namespace) -> int:
    cfg = OtaConfig(
        trusted_keys=[args.pubkey],
        allow_http=True,
        download_timeout=10.0,
        health_frames=4,
        health_max_latency_ms=1000.0,
        health_timeout=30.0,
    )
    async with live_node(args.state, args.factory, cfg) as node:
        cmd = UpdateModel(cmd="update_model", id=args.id, url=args.url, sha256=args.sha256, version=args.version)
        await node.updater.handle(cmd)
        event = node.sink.events[-1]
    print(event.model_dump_json(), flush=True)
    return 0 if event.ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("state", "factory", "pubkey"):
        parser.add_argument(name, type=Path)
    for name in ("url", "sha256", "version", "id"):
        parser.add_argument(name)
    parser.add_argument("--steps", type=Path)
    parser.add_argument("--kill-before", type=int)
    args = parser.parse_args()
    with open(args.steps, "w") if args.steps else open(os.devnull, "w") as steps:
        _watch(args.state.absolute(), steps if args.steps else None, args.kill_before)
        return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
