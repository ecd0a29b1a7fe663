"""Run ``edge-node simulate`` / ``monitor`` as real processes against a test broker (fleet tests, bench)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.paths import clean_env

__all__ = ["Simulator", "edge_env", "monitor_snapshot", "proc_cpu_seconds", "stop_process"]


def edge_env(port: int, **extra: str) -> dict[str, str]:
    """The environment of a tool talking to the test broker; no EDGE_* leaks in from the caller's shell."""
    return clean_env(EDGE_MQTT__HOST="127.0.0.1", EDGE_MQTT__PORT=str(port), PYTHONUNBUFFERED="1", **extra)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def monitor_snapshot(port: int, cwd: Path, *args: str, timeout: float = 5.0) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "edge_node", "monitor", "--once", "--json", "--timeout", str(timeout), *args]
    out = subprocess.run(cmd, env=edge_env(port), cwd=cwd, capture_output=True, timeout=timeout + 30, check=False)
    assert out.returncode == 0, out.stderr.decode()
    data = json.loads(out.stdout)
    assert isinstance(data, dict)
    return data


class Simulator:
    """``edge-node simulate`` in the background; its JSON-line events are read on a thread."""

    def __init__(self, port: int, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "edge_node", "simulate", *args]
        self.proc = subprocess.Popen(
            cmd, env=edge_env(port, **(env or {})), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                event = json.loads(line)
                event["received"] = time.monotonic()
                self.events.put(event)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                break
            if event["event"] == name:
                return event
        raise AssertionError(f"simulate sent no {name!r} event in {timeout}s; stderr: {''.join(self.stderr)[-2000:]}")

    def close(self) -> None:
        stop_process(self.proc)
