"""The systemd units in deploy/systemd/: bounded, confined, wired to the settings the code reads, and valid.

No systemd runs here (PID 1 is not systemd, and the IP rules need cgroup v2), so the limits cannot be watched
at work; what is checked: the node's unit is what the Ansible role renders from its defaults, the IP allow
list lets a fleet's private addresses through and a public one not, the dashboard's credentials are found
under the names the code reads, ``systemd-analyze verify`` has no complaint, and the offline security
analysis stays where it is.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from edge_node.config import DashboardConfig, MqttConfig
from edge_node.mqtt import ssl_context
from tests.support.paths import REPO
from tests.support.pki import Authority

UNITS = REPO / "deploy" / "systemd"
NODE, DASHBOARD = UNITS / "edge-node.service", UNITS / "edge-node-dashboard.service"
RECORD = UNITS / "edge-node-record.service"
ROLE = REPO / "deploy" / "ansible" / "roles" / "edge_node"
ANALYZE = shutil.which("systemd-analyze")

# systemd's names for address sets (systemd.resource-control(5), IPAddressAllow=)
NAMED = {
    "localhost": ["127.0.0.0/8", "::1/128"],
    "link-local": ["169.254.0.0/16", "fe80::/64"],
    "multicast": ["224.0.0.0/4", "ff00::/8"],
    "any": ["0.0.0.0/0", "::/0"],
}


def _directives(unit: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit, in order, by key (comments and sections left out)."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def _role_vars(**overrides: object) -> dict[str, object]:
    """The role's defaults with their references resolved, as Ansible would (``overrides`` on top)."""
    raw = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    values: dict[str, object] = {"inventory_hostname": "pi-1", "role_path": str(ROLE), **raw, **overrides}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    for _ in range(10):  # references nest a few levels deep
        values = {k: env.from_string(v).render(values) if isinstance(v, str) else v for k, v in values.items()}
    return values


def _render_node_unit(**overrides: object) -> str:
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.from_string((ROLE / "templates" / "edge-node.service.j2").read_text()).render(_role_vars(**overrides))


def _networks(allow: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(net) for item in allow.split() for net in NAMED.get(item, [item])]


def _allowed(allow: str, address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == net.version and ip in net for net in _networks(allow))


def test_the_shipped_node_unit_is_what_the_role_renders_with_its_defaults() -> None:
    """With a password (the shipped file shows that credential line); tests/deploy/test_ansible_role.py renders it for
    real, with a client key too."""
    assert _render_node_unit(edge_node_mqtt_password="x") == NODE.read_text()


@pytest.mark.parametrize("unit", [NODE, DASHBOARD, RECORD], ids=["node", "dashboard", "record"])
def test_each_unit_bounds_its_memory_and_its_network(unit: Path) -> None:
    d = _directives(unit)
    high, top = (d[key][-1] for key in ("MemoryHigh", "MemoryMax"))
    assert re.fullmatch(r"\d+M", high) and re.fullmatch(r"\d+M", top) and 0 < int(high[:-1]) < int(top[:-1])
    assert d["IPAddressDeny"] == ["any"]
    (allow,) = d["IPAddressAllow"]
    private = ["127.0.0.1", "::1", "169.254.3.4", "fe80::1", "10.1.2.3", "172.20.0.5", "192.168.1.10", "100.101.1.2"]
    assert [a for a in private if not _allowed(allow, a)] == []  # a broker on a LAN, a VPN (Tailscale) or this host
    assert [a for a in ("fd12::1",) if not _allowed(allow, a)] == []  # IPv6 ULA
    assert [a for a in ("8.8.8.8", "1.1.1.1", "2001:4860:4860::8888") if _allowed(allow, a)] == []
    families = set(d["RestrictAddressFamilies"][-1].split())
    assert families <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}


def test_the_role_adds_public_addresses_and_can_lift_the_ip_rule() -> None:
    extra = _render_node_unit(edge_node_ip_allow_extra=["203.0.113.7", "2001:db8::/48"])
    (allow,) = re.findall(r"^IPAddressAllow=(.*)$", extra, flags=re.M)
    assert _allowed(allow, "203.0.113.7") and _allowed(allow, "2001:db8::1") and _allowed(allow, "192.168.0.2")
    assert not _allowed(allow, "203.0.113.8")
    lifted = _render_node_unit(edge_node_ip_allow=["any"])
    assert re.findall(r"^IPAddressAllow=(.*)$", lifted, flags=re.M) == ["any"]  # allow wins over IPAddressDeny=any
    sized = _render_node_unit(edge_node_memory_high="300M", edge_node_memory_max="400M")
    assert "\nMemoryHigh=300M\nMemoryMax=400M\n" in sized


def test_the_dashboard_unit_runs_confined_with_no_secret_in_its_settings() -> None:
    d = _directives(DASHBOARD)
    for key, value in {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",  # the default port 8080 needs no capability
        "AmbientCapabilities": "",
        "WorkingDirectory": "/",
    }.items():
        assert d[key] == [value], key
    assert "User" not in d and "SupplementaryGroups" not in d
    (env_file,) = d["EnvironmentFile"]
    assert env_file.startswith("/etc/edge-node-dashboard/")
    assert any(" EDGE_ENV_FILE=" in f" {e}" and e.endswith("EDGE_ENV_FILE=") for e in d["Environment"])
    secrets = [e for e in d["Environment"] if re.search(r"TOKEN=|PASSWORD=|KEY=", e)]
    assert secrets == []  # secrets only arrive as credentials


def test_the_dashboard_units_credentials_are_what_the_code_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Put files under the unit's LoadCredential= names into a credentials directory, give the code the unit's
    environment (%d: that directory), and it finds the token and a working TLS context."""
    d = _directives(DASHBOARD)
    names = dict(item.split(":", 1) for item in d["LoadCredential"])
    assert all(path.startswith("/etc/edge-node-dashboard/credentials/") for path in names.values())
    creds = tmp_path / "credentials"
    creds.mkdir()
    pki = Authority(tmp_path / "pki")
    cert, key = pki.issue("dashboard")
    token = "t" * 32
    (creds / "dashboard_token").write_text(token + "\n")
    (creds / "mqtt_ca.crt").write_bytes(pki.ca_file.read_bytes())
    (creds / "mqtt_client.crt").write_bytes(cert.read_bytes())
    (creds / "mqtt_client.key").write_bytes(key.read_bytes())
    assert set(names) == {p.name for p in creds.iterdir()}  # every credential the unit loads, and no other
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert DashboardConfig().resolved_token() == token
    settings = dict(pair.split("=", 1) for line in d["Environment"] for pair in line.split())
    mqtt = {k.removeprefix("EDGE_MQTT__").lower(): v.replace("%d", str(creds)) for k, v in settings.items()
            if k.startswith("EDGE_MQTT__")}  # fmt: skip
    assert ssl_context(MqttConfig.model_validate(mqtt)) is not None  # files found, key matches its certificate


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")
@pytest.mark.parametrize(
    ("unit", "exposure"), [(NODE, 1.8), (DASHBOARD, 1.3), (RECORD, 1.3)], ids=["node", "dashboard", "record"]
)
def test_systemd_accepts_each_unit_and_rates_its_exposure(unit: Path, exposure: float, tmp_path: Path) -> None:
    """``verify`` checks every directive (an unknown key or a bad value is only a warning, so the output is
    read); ExecStart= points at a program that exists here, since verify also checks that. ``security``
    (offline) rates the sandbox from 0 (confined) to 10; the bar is today's figure."""
    assert ANALYZE is not None
    copy = tmp_path / unit.name
    copy.write_text(re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", unit.read_text(), flags=re.M))
    verify = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False)
    assert verify.returncode == 0 and str(copy) not in verify.stdout + verify.stderr, verify.stdout + verify.stderr
    security = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    if found is None:
        pytest.skip(f"this systemd-analyze cannot rate a unit offline: {security.stderr.strip()[-200:]}")
    assert float(found.group(1)) <= exposure, security.stdout
