"""A real mosquitto per test: started on a free loopback port with its own config, stoppable and restartable."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.pki import Authority

__all__ = ["Mosquitto", "free_port", "terminate", "tls_broker", "wait_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def terminate(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns once the process is gone."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class Mosquitto:
    """``extra_conf`` lines are appended to the listener config (TLS, ACL, auth...); ``head_conf`` lines go
    before the listener (settings such as ``per_listener_settings`` that must precede every listener)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_conf: str = "allow_anonymous true\n"
    head_conf: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_conf(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(
            self.head_conf + f"listener {self.port} 127.0.0.1\n"
            "persistence false\n"
            # As root, mosquitto drops to the 'mosquitto' user, which cannot write into pytest's tmp dirs.
            "user root\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n" + self.extra_conf
        )

    def start(self) -> Mosquitto:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto")
        self.write_conf()
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.conf_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log_text()}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    def restart(self, downtime: float = 0.0) -> None:
        self.stop()
        time.sleep(downtime)
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def tls_broker(workdir: Path, conf: Path, acl: Path, pki: Authority) -> Mosquitto:
    """An unstarted mosquitto running ``conf`` (a deploy/mosquitto/mosquitto.conf) with ``acl``, a server
    certificate for localhost from ``pki`` and a free port instead of the file's paths and listener."""
    server_cert, server_key = pki.issue("localhost", server=True)
    paths = {"cafile": pki.ca_file, "certfile": server_cert, "keyfile": server_key, "acl_file": acl}
    head: list[str] = []
    lines: list[str] = []
    for raw in conf.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith(("listener", "protocol")):
            continue
        key = line.split()[0]
        # per_listener_settings must precede every listener, so it goes first in the file.
        (head if key == "per_listener_settings" else lines).append(f"{key} {paths[key]}" if key in paths else line)
    return Mosquitto(
        workdir, extra_conf="".join(f"{line}\n" for line in lines), head_conf="".join(f"{line}\n" for line in head)
    )
