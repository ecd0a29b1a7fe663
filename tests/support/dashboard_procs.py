"""Test helpers for the web dashboard: ``edge-node dashboard`` as a real process, and Debian's headless
Chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import json
import queue
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.fleet_procs import edge_env, proc_cpu_seconds, stop_process

__all__ = [
    "CHROMIUM_FLAGS",
    "DashboardProcess",
    "chromium",
    "chromium_path",
    "http_request",
    "measure_fleet",
    "page_until",
]

TOKEN = "test-operator-token-0123456789"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def http_request(
    url: str,
    *,
    method: str = "GET",
    body: object = None,
    headers: dict[str, str] | None = None,
    read: bool = True,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; with ``read=False`` only the first 200 bytes are read."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=tls) as resp:
            return resp.status, dict(resp.headers), resp.read() if read else resp.read(200)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def page_until(page: Any, expression: str, arg: object = None, timeout: float = 20.0) -> None:
    """Poll a JavaScript function until it returns true. (Playwright's wait_for_function evaluates strings,
    which the page's Content-Security-Policy rightly forbids; ``evaluate`` goes through the debugger.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout:.0f}s: {expression}")
        time.sleep(0.05)


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A Playwright Chromium browser on Debian's binary; skips with the reason when it cannot run here."""
    binary = chromium_path()
    if binary is None:
        pytest.skip("the browser tests need Debian's chromium: apt-get install chromium (.ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the browser tests need the playwright package (the dev extra)")
    with tempfile.TemporaryDirectory(prefix="ghostpi-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=binary,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


class DashboardProcess:
    """``python -m edge_node dashboard --port 0`` on the test broker; ``url`` is read from its first line.
    ``tls``: the client context for an HTTPS dashboard (``base`` always names 127.0.0.1, which the test
    certificates carry, whatever name the dashboard printed)."""

    def __init__(
        self,
        port: int,
        cwd: Path,
        *args: str,
        tls: ssl.SSLContext | None = None,
        start_timeout: float = 30.0,
        **env: str,
    ) -> None:
        self.tls = tls
        defaults = {"EDGE_DASHBOARD__TOKEN": TOKEN, "EDGE_STATE_DIR": str(cwd / "dashboard-state")}
        environment = edge_env(port, **(defaults | env))
        self.log_path = cwd / "dashboard.log"
        cmd = [sys.executable, "-m", "edge_node", "dashboard", "--port", "0", *args]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, env=environment, cwd=cwd, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.url = self._wait_url(start_timeout)
            self._wait_broker(start_timeout)
        except BaseException:
            self.close()  # never leave a server behind when the start fails
            raise

    def _wait_broker(self, timeout: float) -> None:
        """The URL is printed once HTTP listens; the MQTT connection may take a moment longer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(self.base + "/api/config", timeout=5, context=self.tls) as resp:
                if json.load(resp)["broker"]["connected"]:
                    return
            time.sleep(0.1)
        self.close()
        raise AssertionError(f"the dashboard did not connect to the broker in {timeout}s:\n{self.log()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)

    def _wait_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = re.search(r"(https?://\S+)", line)
            if match:
                return match.group(1)
        self.close()
        raise AssertionError(f"the dashboard printed no URL in {timeout}s:\n{self.log()}")

    @property
    def base(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://127.0.0.1:{parts.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[str]:
        """What it printed after the URL, so far."""
        out = []
        while not self._lines.empty():
            out.append(self._lines.get_nowait())
        return out

    def close(self) -> None:
        stop_process(self.proc)
        self._log.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_fleet(port: int, cwd: Path, *, nodes: int, rate: float, seconds: float) -> dict[str, float]:
    """``simulate --nodes N --rate HZ``, the dashboard and a browser; after every card is on screen, measure
    for ``seconds``: the dashboard's CPU (process CPU time / wall time, 100 = one core) and, in the browser,
    the seconds from each prediction's ``ts`` (the simulator's clock, same machine) to the frame that
    painted it."""
    from tests.support.fleet_procs import Simulator

    sim = Simulator(port, cwd, "--nodes", str(nodes), "--rate", str(rate))
    dash = None
    try:
        sim.wait_event("online", timeout=120)
        dash = DashboardProcess(port, cwd)
        with chromium() as browser:
            page = browser.new_page()
            page.goto(dash.base + "/")
            deadline = time.monotonic() + 60
            while page.evaluate("document.querySelectorAll('.card').length") < nodes:
                if time.monotonic() > deadline:
                    raise AssertionError(f"not all {nodes} cards appeared in 60 s:\n{dash.log()[-2000:]}")
                time.sleep(0.2)
            online = page.evaluate("document.querySelectorAll('.card.online').length")
            time.sleep(2.0)  # settle: the first full picture and the charts' first points
            page.evaluate("ghostpiStats.latencies = []; ghostpiStats.serverLags = []; ghostpiStats.renderMs = []")
            cpu0, wall0 = proc_cpu_seconds(dash.proc.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, wall1 = proc_cpu_seconds(dash.proc.pid), time.monotonic()
            latencies = [float(x) for x in page.evaluate("ghostpiStats.latencies")]
            lags = [float(x) for x in page.evaluate("ghostpiStats.serverLags")] or [0.0]
            frames = [float(x) for x in page.evaluate("ghostpiStats.renderMs")] or [0.0]
            page.close()
        assert latencies, "the browser rendered no prediction in the window"
        return {
            "nodes": nodes,
            "cards_online": online,
            "window_s": round(wall1 - wall0, 1),
            "dashboard_cpu_percent": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 1),
            "predictions_rendered": len(latencies),
            "latency_median_s": round(_percentile(latencies, 0.5), 3),
            "latency_p95_s": round(_percentile(latencies, 0.95), 3),
            "latency_p99_s": round(_percentile(latencies, 0.99), 3),
            "latency_max_s": round(max(latencies), 3),
            "over_1s": sum(x > 1.0 for x in latencies),
            "server_lag_median_s": round(_percentile(lags, 0.5), 3),
            "server_lag_p95_s": round(_percentile(lags, 0.95), 3),
            "render_ms_median": round(_percentile(frames, 0.5), 1),
            "render_ms_p95": round(_percentile(frames, 0.95), 1),
            "frames": len(frames),
        }
    finally:
        if dash is not None:
            dash.close()
        sim.close()
