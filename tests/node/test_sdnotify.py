"""sd_notify against a real datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.sdnotify import Notifier, WatchdogGate, run_watchdog


class FakeSystemd:
    """Binds the notify socket and collects every datagram, like systemd's manager does."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def states(self) -> list[str]:
        return [text for _, text in self.messages]


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    try:
        yield fake
    finally:
        fake.close()


def _wait_for(predicate: object, timeout: float = 2.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_messages_reach_the_socket(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": systemd.address})
    assert notifier.enabled
    notifier.ready()
    notifier.status("running\nmodel v2")
    notifier.watchdog()
    notifier.stopping()
    _wait_for(lambda: len(systemd.messages) == 4)
    assert systemd.states() == ["READY=1", "STATUS=running model v2", "WATCHDOG=1", "STOPPING=1"]
    notifier.close()


def test_abstract_socket() -> None:
    fake = FakeSystemd(f"@ghostpi-test-{uuid.uuid4().hex}")
    try:
        Notifier.from_env({"NOTIFY_SOCKET": fake.address}).ready()
        _wait_for(lambda: fake.states() == ["READY=1"])
    finally:
        fake.close()


def test_no_socket_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert notifier.watchdog_interval() is None


def test_unreachable_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.notify("READY=1") is False


def test_watchdog_interval_only_for_this_pid() -> None:
    mine = Notifier.from_env({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval() == 3.0
    assert Notifier.from_env({"WATCHDOG_USEC": "3000000"}).watchdog_interval() == 3.0
    other = Notifier.from_env({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval() is None
    assert Notifier.from_env({"WATCHDOG_USEC": "garbage"}).watchdog_interval() is None


def test_gate_is_pure() -> None:
    gate = WatchdogGate(2.0)
    assert not gate.should_ping(100.0)  # nothing processed yet: READY has not been earned either
    gate.progress(100.0)
    assert gate.should_ping(101.9)
    assert not gate.should_ping(102.1)
    gate.progress(103.0)
    assert gate.should_ping(103.5)
    with pytest.raises(ValueError):
        WatchdogGate(0)


def test_pings_flow_with_progress_and_stop_when_the_pipeline_stalls(systemd: FakeSystemd) -> None:
    """A worker thread 'processes frames' for a while, then stalls; pings must stop soon after."""
    env = {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_env(env)
    gate = WatchdogGate(timeout_s=0.3)
    stall = threading.Event()
    stalled_at: list[float] = []

    def pipeline() -> None:
        for _ in range(40):  # ~0.8 s of frames at 50 fps
            gate.progress()
            time.sleep(0.02)
        stalled_at.append(time.monotonic())
        stall.set()

    async def main() -> None:
        worker = threading.Thread(target=pipeline)
        worker.start()
        task = asyncio.create_task(run_watchdog(notifier, gate))  # period = 0.2 s (half of 0.4 s)
        await asyncio.to_thread(stall.wait, 5)
        await asyncio.sleep(1.2)  # four more periods: must bring no pings past the gate's timeout
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        worker.join()

    asyncio.run(main())
    notifier.close()
    pings = [t for t, text in systemd.messages if text == "WATCHDOG=1"]
    assert len(pings) >= 3, systemd.messages
    before = [t for t in pings if t <= stalled_at[0]]
    after = [t for t in pings if t > stalled_at[0]]
    assert len(before) >= 3
    # after the stall, at most the pings within the gate's 0.3 s timeout (+ one period of slack)
    assert all(t - stalled_at[0] <= 0.3 + 0.2 for t in after), (after, stalled_at)
    assert len(after) <= 2


def test_no_watchdog_means_no_task(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": systemd.address})
    gate = WatchdogGate(1.0)
    gate.progress()
    asyncio.run(asyncio.wait_for(run_watchdog(notifier, gate), 1.0))  # returns at once
    assert systemd.messages == []
