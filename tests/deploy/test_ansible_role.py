"""Run the ``edge_node`` and ``recorder`` Ansible roles for real (connection: local) into a throwaway root, twice.

Packages, the system user and systemd are switched off (role variables) since a test may not touch the
machine; everything else runs as on a Pi: venv with --system-site-packages, the wheel built here with
``pip wheel --no-deps``, env file, credentials, factory bundle, unit. Trade-off: the wheel is installed with
``--no-deps --no-index`` so the test is fast and offline; the test then points the venv at the project's
own environment with a .pth file to prove the installed entry point runs.
"""

from __future__ import annotations

import grp
import json
import os
import platform
import pwd
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from edge_node.bundle.archive import pack
from tests.support.constraints import DIR as CONSTRAINTS
from tests.support.constraints import constraints
from tests.support.constraints import pins as target_pins
from tests.support.paths import REPO

ANSIBLE = REPO / "deploy" / "ansible"
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
SECRET = "s3cret-pa55word"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy of the sources, so the shared working tree gets no build/ or egg-info."""
    src = tmp / "src"
    shutil.copytree(REPO / "edge_node", src / "edge_node", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = tmp / "wheels"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)]
    subprocess.run(cmd, check=True, env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"}, timeout=300)
    [wheel] = out.glob("ghostpi_edge_node-*.whl")
    return wheel


def _run(playbook: Path, extra: Path, tmp: Path) -> tuple[str, dict[str, int]]:
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }
    cmd = [str(PLAYBOOK), "-i", "localhost,", "-c", "local", "-e", f"@{extra}", str(playbook)]
    out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    recap = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out.stdout)
    assert recap, out.stdout[-2000:]
    ok, changed, unreachable, failed = map(int, recap.groups())
    return out.stdout, {"ok": ok, "changed": changed, "unreachable": unreachable, "failed": failed}


def local_role(tmp: Path, **variables: object) -> tuple[Path, Path]:
    """(vars file, playbook) for the edge_node role run here, unprivileged: packages, user and systemd off,
    files owned by the current user, this interpreter as the target's python; ``variables`` on top."""
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    settings = {
        "ansible_python_interpreter": sys.executable,
        "edge_node_manage_packages": False,
        "edge_node_manage_user": False,
        "edge_node_manage_service": False,
        "edge_node_user": user,
        "edge_node_group": group,
        "edge_node_owner": user,
        "edge_node_owner_group": group,
        "edge_node_python": sys.executable,
        **variables,
    }
    extra = tmp / "vars.json"
    extra.write_text(json.dumps(settings))
    playbook = tmp / "play.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  roles: [edge_node]\n")
    return extra, playbook


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_edge_node_role_installs_idempotently(tmp_path: Path, tiny_bundle: Path) -> None:
    if not PLAYBOOK.exists():
        pytest.skip("ansible-playbook is not installed (pip install 'ghostpi-edge-node[dev]')")
    root = tmp_path / "root"
    wheel = _build_wheel(tmp_path)
    files = tmp_path / "controller"
    files.mkdir()
    factory = pack(tiny_bundle, files / "tiny.tar.gz")
    for name in ("ca.crt", "node.crt", "node.key", "release.pub.pem"):
        (files / name).write_text(f"-----BEGIN TEST {name}-----\n")
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    extra, playbook = local_role(
        tmp_path,
        node_id="pi-test.1",
        edge_node_root=str(root),
        edge_node_wheel=str(wheel),
        edge_node_pip_extra_args="--no-deps --no-index",
        edge_node_mqtt_host="broker.lan",
        edge_node_mqtt_port=8883,
        edge_node_mqtt_password=SECRET,
        edge_node_mqtt_ca_cert_src=str(files / "ca.crt"),
        edge_node_mqtt_client_cert_src=str(files / "node.crt"),
        edge_node_mqtt_client_key_src=str(files / "node.key"),
        edge_node_factory_bundle=str(factory),
        edge_node_trusted_keys=[str(files / "release.pub.pem")],
        edge_node_env={"EDGE_HEARTBEAT__INTERVAL": "5"},
    )

    _, first = _run(playbook, extra, tmp_path)
    assert first["changed"] > 5 and first["failed"] == 0

    etc = root / "etc" / "edge-node"
    env_file = etc / "edge-node.env"
    assert _mode(etc) == 0o750 and _mode(env_file) == 0o640
    assert _mode(etc / "credentials") == 0o700
    assert _mode(etc / "credentials" / "mqtt_password") == 0o600
    assert (etc / "credentials" / "mqtt_password").read_text().strip() == SECRET
    assert _mode(etc / "credentials" / "mqtt_client_key") == 0o600
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line and not line.startswith("#"))
    models = root / "opt" / "ghostpi" / "models"
    assert env == {
        "EDGE_NODE_ID": "pi-test.1",
        "EDGE_TOPIC_PREFIX": "ghostpi",
        "EDGE_MODE": "high",
        "EDGE_CAMERA__SOURCE": "picamera2",
        "EDGE_MQTT__HOST": "broker.lan",
        "EDGE_MQTT__PORT": "8883",
        "EDGE_MQTT__CA_FILE": f"{etc}/mqtt-ca.crt",
        "EDGE_MQTT__CERT_FILE": f"{etc}/mqtt-client.crt",
        "EDGE_MODEL__BUNDLE": f"{models}/factory.tar.gz",
        "EDGE_OTA__TRUSTED_KEYS": f"{etc}/release.pub.pem",
        "EDGE_HA__ENABLED": "false",
        "EDGE_HEARTBEAT__INTERVAL": "5",
    }
    assert (models / "factory.tar.gz").read_bytes() == factory.read_bytes()
    # the pinned versions of this machine's target (Debian 12 x86_64 here), and numpy from PyPI, not apt
    release = platform.freedesktop_os_release().get("VERSION_CODENAME", "")
    pins = REPO / "deploy" / "constraints" / f"{release}-{platform.machine()}.txt"
    if pins.exists():
        assert (root / "opt" / "ghostpi" / "constraints.txt").read_text() == pins.read_text()
        assert not (root / "opt" / "ghostpi" / "constraints-system.txt").exists()
    assert (etc / "mqtt-ca.crt").exists() and (etc / "release.pub.pem").exists()

    # the venv: sees system site packages, holds the wheel's entry point
    venv = root / "opt" / "ghostpi" / "venv"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert (venv / "bin" / "edge-node").exists()
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "project-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # deps of the test venv
    version = subprocess.run([str(venv / "bin" / "edge-node"), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("edge-node 0.1.0"), version

    # the unit: hardened, verified by systemd, and the same as deploy/systemd/edge-node.service
    unit = root / "etc" / "systemd" / "system" / "edge-node.service"
    text = unit.read_text()
    assert _mode(unit) == 0o644 and SECRET not in text and SECRET not in env_file.read_text()
    assert f"ExecStart={venv}/bin/edge-node run" in text and f"EnvironmentFile={env_file}" in text
    assert f"LoadCredential=mqtt_password:{etc}/credentials/mqtt_password" in text
    assert "Environment=EDGE_MQTT__KEY_FILE=%d/mqtt_client_key" in text
    for directive in ("Type=notify", "WatchdogSec=30", "Restart=always", "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert directive in text
    # Settings come only from the root-owned env file: no settings file of the node's own, cwd not the state dir.
    assert "\nWorkingDirectory=/\n" in text and " EDGE_ENV_FILE=\n" in text
    normalised = "".join(
        line
        for line in text.replace(str(root), "").replace(f"User={user}", "User=ghostpi").splitlines(keepends=True)
        if line.startswith("#") or "mqtt_client_key" not in line
    ).replace(f"Group={group}", "Group=ghostpi")
    assert normalised == (REPO / "deploy" / "systemd" / "edge-node.service").read_text()
    analyze = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if Path(analyze).exists():
        verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        complaints = [line for line in (verify.stdout + verify.stderr).splitlines() if str(unit) in line]
        assert verify.returncode == 0 and not complaints, verify.stdout + verify.stderr

    _, second = _run(playbook, extra, tmp_path)
    assert second["changed"] == 0 and second["failed"] == 0, second


def _env(**settings: str) -> dict[str, object]:
    return {"edge_node_env": settings}


def _fake_python(tmp: Path, probe: dict[str, object]) -> str:
    """A stand-in for a target's python3 that answers the role's probe: hardware we do not have (a 32-bit
    Raspberry Pi OS, another release)."""
    info = {"python": "3.11", "bits": 64, "machine": "aarch64", "codename": "bookworm", "numpy": None,
            "numpy_file": None, **probe}  # fmt: skip
    fake = tmp / "python3"
    fake.write_text(f"#!/bin/sh\necho '{json.dumps(info)}'\n")
    fake.chmod(0o755)
    return str(fake)


@pytest.mark.parametrize(
    ("variables", "probe", "message"),
    [
        ({"node_id": "operator"}, None, "node_id operator cannot name a node"),
        ({"node_id": "ALL"}, None, "node_id ALL cannot name a node"),
        ({"node_id": "cam-alice", "edge_node_reserved_ids": ["cam-alice"]}, None, "node_id cam-alice cannot name"),
        ({"node_id": "pi.lan", "edge_node_ha_enabled": True}, None, "Set a node_id such as pi for this host"),
        ({}, {"machine": "armv7l", "bits": 32}, "Flash the 64-bit Raspberry Pi OS"),
        ({}, {"machine": "aarch64", "bits": 32}, "even on a 64-bit kernel"),  # 64-bit kernel, armhf userland
        ({}, {"codename": "bullseye", "python": "3.9"}, "No pinned versions for bullseye-aarch64 (Python 3.9)"),
        ({}, {"python": "3.12"}, "bookworm-aarch64.txt pins versions for another Python"),
        # settings that weaken the node's security: refused in edge_node_env (in any case, as the node reads them)
        (_env(EDGE_OTA__ALLOW_UNSIGNED_MODELS="true"), None, "edge_node_env sets EDGE_OTA__ALLOW_UNSIGNED_MODELS,"),
        (_env(edge_ota__allow_http="1"), None, "edge_node_env sets edge_ota__allow_http,"),
        (_env(EDGE_MQTT__TLS_INSECURE="false"), None, "set edge_node_allow_insecure: true for this host"),
        # ... unless the role is told: the check passes, and the next one (the target) is what stops this run
        (_env(EDGE_OTA__ALLOW_HTTP="true") | {"edge_node_allow_insecure": True}, {"bits": 32}, "Flash the 64-bit"),
        (_env(edge_mqtt__password="x"), None, "secrets go in edge_node_mqtt_password"),
    ],
    ids=[
        "tool-identity",
        "all",
        "fleet-identity",
        "ha-with-a-dot",
        "armv7l",
        "armhf-on-arm64-kernel",
        "unknown-release",
        "other-python",
        "unsigned-models",
        "http-lowercase",
        "tls-insecure",
        "insecure-allowed",
        "secret-lowercase",
    ],
)
def test_role_refuses_what_cannot_work_before_installing_anything(
    tmp_path: Path, variables: dict[str, object], probe: dict[str, object] | None, message: str
) -> None:
    if not PLAYBOOK.exists():
        pytest.skip("ansible-playbook is not installed (pip install 'ghostpi-edge-node[dev]')")
    if probe is not None:
        variables = {**variables, "edge_node_python": _fake_python(tmp_path, probe)}
    settings = {"node_id": "pi-1", "edge_node_root": str(tmp_path / "root"), "edge_node_wheel": "x.whl", **variables}
    extra, playbook = local_role(tmp_path, **settings)
    with pytest.raises(AssertionError, match=re.escape(message)):
        _run(playbook, extra, tmp_path)
    assert not (tmp_path / "root").exists()  # nothing was installed


# --- the recorder role (edge-node record) -----------------------------------------------------------------


def local_recorder_role(tmp: Path, **variables: object) -> tuple[Path, Path]:
    """(vars file, playbook) for the recorder role run here, unprivileged: packages and systemd off, files owned
    by the current user, this interpreter as the target's python; ``variables`` on top."""
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    settings = {
        "ansible_python_interpreter": sys.executable,
        "recorder_manage_packages": False,
        "recorder_manage_service": False,
        "recorder_owner": user,
        "recorder_owner_group": group,
        "recorder_python": sys.executable,
        "recorder_identity": "recorder",
        "recorder_mqtt_host": "broker.lan",
        **variables,
    }
    extra = tmp / "vars.json"
    extra.write_text(json.dumps(settings))
    playbook = tmp / "play.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  roles: [recorder]\n")
    return extra, playbook


def _stub_wheel(out: Path, name: str, version: str, metadata: str = "") -> None:
    """A wheel of ``name`` ``version`` that installs only its metadata: a package index for the test that pip
    resolves like the real one, in no time and offline."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{metadata}",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(out / f"{dist}-py3-none-any.whl", "w") as wheel:
        for path, text in {**files, f"{dist}.dist-info/RECORD": record}.items():
            wheel.writestr(path, text)


def _stub_index(out: Path, pins: dict[str, str]) -> Path:
    """Every pinned package at its pin and at a newer 999.0, which pip takes unless the pins hold it back."""
    out.mkdir()
    for name, pinned in pins.items():
        for version in (pinned, "999.0"):
            extra = ""
            if name == "psycopg":  # psycopg[binary] is psycopg-binary of the same version, as on PyPI
                extra = f'Provides-Extra: binary\nRequires-Dist: psycopg-binary=={version}; extra == "binary"\n'
            _stub_wheel(out, name, version, extra)
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_recorder_role_installs_idempotently(tmp_path: Path) -> None:
    if not PLAYBOOK.exists():
        pytest.skip("ansible-playbook is not installed (pip install 'ghostpi-edge-node[dev]')")
    root = tmp_path / "root"
    wheel = _build_wheel(tmp_path)
    files = tmp_path / "controller"
    files.mkdir()
    for name in ("ca.crt", "recorder.crt", "recorder.key"):
        (files / name).write_text(f"-----BEGIN TEST {name}-----\n")
    # The pinned versions of this machine's target (Debian 12 x86_64 here); the wheel's dependencies come from
    # a stub index holding each pin and a newer release, so the venv shows which ones pip was allowed to take.
    release = platform.freedesktop_os_release().get("VERSION_CODENAME", "")
    target = CONSTRAINTS / f"{release}-{platform.machine()}.txt"
    pins = target_pins(target)
    index = _stub_index(tmp_path / "index", pins)
    pgpass = f"db.lan:5432:ghostpi:recorder:{SECRET}"
    extra, playbook = local_recorder_role(
        tmp_path,
        recorder_root=str(root),
        recorder_wheel=str(wheel),
        recorder_pip_extra_args=f"--no-index --find-links {index}",
        recorder_ca_cert_src=str(files / "ca.crt"),
        recorder_client_cert_src=str(files / "recorder.crt"),
        recorder_client_key_src=str(files / "recorder.key"),
        recorder_dsn="host=db.lan dbname=ghostpi user=recorder",
        recorder_pgpass=pgpass,
        recorder_env={"EDGE_RECORD__BATCH_ROWS": "5000"},
    )

    _, first = _run(playbook, extra, tmp_path)
    assert first["changed"] > 5 and first["failed"] == 0

    etc = root / "etc" / "edge-node-record"
    creds = etc / "credentials"
    env_file = etc / "record.env"
    assert _mode(etc) == 0o700 and _mode(creds) == 0o700 and _mode(env_file) == 0o600
    for name in ("pgpass", "mqtt_ca.crt", "mqtt_client.crt", "mqtt_client.key"):
        assert _mode(creds / name) == 0o600, name
    assert (creds / "pgpass").read_text() == pgpass + "\n"
    assert (creds / "mqtt_client.key").read_text() == (files / "recorder.key").read_text()
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line and not line.startswith("#"))
    assert env == {
        "EDGE_TOPIC_PREFIX": "ghostpi",
        "EDGE_RECORD__NAME": "recorder",
        "EDGE_RECORD__GROUP": "record",
        "EDGE_RECORD__KEEP_DAYS": "10",
        "EDGE_MQTT__HOST": "broker.lan",
        "EDGE_MQTT__PORT": "8883",
        "EDGE_RECORD__DSN": "host=db.lan dbname=ghostpi user=recorder",
        "EDGE_RECORD__BATCH_ROWS": "5000",
    }

    # the venv: its own (no system site packages), holds the wheel's entry point
    venv = root / "opt" / "ghostpi-record" / "venv"
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    # ... and the target's pinned versions, the record extra's included, copied beside it
    install = root / "opt" / "ghostpi-record"
    assert (install / "constraints.txt").read_text() == target.read_text()
    numpy_pin = install / "constraints-numpy.txt"  # only where the node's numpy comes from apt (arm64)
    if "# system-numpy:" in target.read_text():
        assert numpy_pin.read_text() == f"numpy=={pins['numpy']}\n"
    else:
        assert not numpy_pin.exists()
    listing = "import importlib.metadata as m, json; print(json.dumps({d.name: d.version for d in m.distributions()}))"
    ask = subprocess.run([str(venv / "bin" / "python"), "-c", listing], capture_output=True, text=True, timeout=60)
    installed = {constraints._norm(k): v for k, v in json.loads(ask.stdout).items()}
    installed.pop("ghostpi-edge-node")
    for tool in ("pip", "setuptools"):
        installed.pop(tool, None)
    assert {"psycopg", "psycopg-binary", "nats-py", "pydantic", "numpy"} <= set(installed), installed
    assert installed == {name: pins[name] for name in installed}, installed
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "project-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # deps of the test venv
    version = subprocess.run([str(venv / "bin" / "edge-node"), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("edge-node 0.1.0"), version

    # the unit: the shipped one, plus the credentials the role installed
    unit = root / "etc" / "systemd" / "system" / "edge-node-record.service"
    text = unit.read_text()
    assert _mode(unit) == 0o644 and SECRET not in text and SECRET not in env_file.read_text()
    assert f"ExecStart={venv}/bin/edge-node record" in text and f"EnvironmentFile={env_file}" in text
    for line in (
        f"LoadCredential=pgpass:{creds}/pgpass",
        "Environment=PGPASSFILE=%d/pgpass",
        f"LoadCredential=mqtt_client.key:{creds}/mqtt_client.key",
        "Environment=EDGE_MQTT__KEY_FILE=%d/mqtt_client.key",
        "Environment=EDGE_MQTT__TLS=true EDGE_MQTT__CA_FILE=%d/mqtt_ca.crt",
        "Environment=EDGE_MQTT__CERT_FILE=%d/mqtt_client.crt",
    ):
        assert f"\n{line}\n" in text, line
    normalised = "".join(
        line
        for line in text.replace(str(root), "").splitlines(keepends=True)
        if line.startswith("#") or not (line.startswith("LoadCredential=") or "%d/" in line)
    )
    assert normalised == (REPO / "deploy" / "systemd" / "edge-node-record.service").read_text()
    analyze = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if Path(analyze).exists():
        verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        complaints = [line for line in (verify.stdout + verify.stderr).splitlines() if str(unit) in line]
        assert verify.returncode == 0 and not complaints, verify.stdout + verify.stderr

    _, second = _run(playbook, extra, tmp_path)
    assert second["changed"] == 0 and second["failed"] == 0, second


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"recorder_identity": ""}, "has no recorder identity of its own"),
        ({"recorder_identity": "operator"}, "has no recorder identity of its own"),
        ({"recorder_group": "a.b"}, "The group (recorder_group: a.b)"),
        ({"recorder_dsn": "host=db.lan user=r password=x"}, "goes in recorder_pgpass"),
        ({"recorder_dsn": "postgresql://r:x@db.lan/ghostpi"}, "goes in recorder_pgpass"),
        ({"recorder_env": {"edge_record__dsn": "host=db.lan"}}, "not recorder_env"),
        ({"recorder_mqtt_host": ""}, "and the broker"),
        # a host whose target has no pinned versions (probed with a stand-in python3), or another Python's
        ({"probe": {"codename": "bullseye", "python": "3.9"}}, "No pinned versions for bullseye-aarch64 (Python 3.9)"),
        ({"probe": {"codename": "trixie", "machine": "x86_64"}}, "or set recorder_constraints: false"),
        ({"probe": {"python": "3.12"}}, "bookworm-aarch64.txt pins versions for another Python"),
        ({"probe": {"python": "3.12"}, "recorder_constraints_target": "trixie-x86_64"}, "No pinned versions for tri"),
    ],
    ids=[
        "no-identity",
        "not-a-recorder-identity",
        "group",
        "dsn-password",
        "url-password",
        "env-dsn",
        "no-broker",
        "unknown-release",
        "no-file-for-target",
        "other-python",
        "override-without-file",
    ],
)
def test_recorder_role_refuses_what_cannot_work_before_installing_anything(
    tmp_path: Path, variables: dict[str, object], message: str
) -> None:
    if not PLAYBOOK.exists():
        pytest.skip("ansible-playbook is not installed (pip install 'ghostpi-edge-node[dev]')")
    if "probe" in variables:  # a stand-in python3 answers the role's probe
        probe = variables["probe"]
        assert isinstance(probe, dict)
        variables = {k: v for k, v in variables.items() if k != "probe"} | {
            "recorder_python": _fake_python(tmp_path, probe)
        }
    settings = {"recorder_root": str(tmp_path / "root"), "recorder_wheel": "x.whl", **variables}
    extra, playbook = local_recorder_role(tmp_path, **settings)
    with pytest.raises(AssertionError, match=re.escape(message)):
        _run(playbook, extra, tmp_path)
    assert not (tmp_path / "root").exists()  # nothing was installed


@pytest.mark.parametrize(("tls", "listen"), [(True, "0.0.0.0:4222"), (False, "127.0.0.1:4222")])
def test_plain_nats_clients_reach_a_server_from_other_hosts_only_with_mutual_tls(tls: bool, listen: str) -> None:
    """Port 4222 is the recorders' (plain NATS, certificate login). Without TLS nothing logs in there and a client
    may use the JetStream API, so the role's default keeps it on loopback."""
    binary = Path(sys.executable).with_name("ansible")
    out = subprocess.run(
        [str(binary), "localhost", "-c", "local", "-i", "localhost,", "-m", "ansible.builtin.debug",
         "-a", "msg={{ nats_client_listen }}", "-e", f"@{ANSIBLE / 'roles/nats/defaults/main.yml'}",
         "-e", json.dumps({"nats_tls": tls, "groups": {}})],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert f'"msg": "{listen}"' in out.stdout, out.stdout
