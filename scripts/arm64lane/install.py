"""Install the node into the emulated root by running the project's own Ansible role against it.

The role runs through Ansible's ``community.general.chroot`` connection (bundled in the ``ansible`` package, no
Galaxy needed), so the root gets exactly what a Pi gets from ``nodes.yml``: the target probe, apt packages,
the service user, a ``--system-site-packages`` venv with the wheel built here by ``pip wheel --no-deps``,
installed with the target's pinned versions (``deploy/constraints/bookworm-aarch64.txt``) and apt's numpy
pinned, the env file and the unit file. Only starting the unit is left out (``edge_node_manage_service``:
there is no systemd running in a chroot); the lane starts ``edge-node run`` itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["LANE_NODE_ID", "build_wheel", "inventory", "role_vars", "run_role"]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "deploy" / "ansible"
LANE_NODE_ID = "arm64-lane"
PLAY = "- hosts: pi\n  gather_facts: false\n  roles: [edge_node]\n"


def build_wheel(out: Path) -> Path:
    """The node's wheel, built from this checkout as ``nodes.yml`` does (fixed timestamps)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("ghostpi_edge_node-*.whl"):
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)]
    subprocess.run(cmd, check=True, env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"}, timeout=600)
    [wheel] = out.glob("ghostpi_edge_node-*.whl")
    return wheel


def inventory(root: Path) -> str:
    """One host, the root itself, reached with the chroot connection and its own (emulated) python3."""
    return (
        "[pi]\n"
        f"arm64-root ansible_host={root} ansible_connection=community.general.chroot "
        "ansible_python_interpreter=/usr/bin/python3\n"
    )


def role_vars(wheel: Path, factory: Path) -> dict[str, object]:
    """The role's variables for the lane: a real install, but no service start and no broker of its own."""
    return {
        "node_id": LANE_NODE_ID,
        "edge_node_wheel": str(wheel),
        "edge_node_pip_extras": ["litert", "demo"],
        "edge_node_manage_service": False,
        "edge_node_camera_source": "demo",
        "edge_node_mode": "high",
        "edge_node_mqtt_host": "127.0.0.1",
        "edge_node_factory_bundle": str(factory),
    }


def run_role(root: Path, wheel: Path, factory: Path, work: Path, log: Path) -> None:
    """Run the edge_node role against ``root``; raises CalledProcessError with the log's tail on failure."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "inventory.ini").write_text(inventory(root))
    (work / "vars.json").write_text(json.dumps(role_vars(wheel, factory), indent=2))
    (work / "play.yml").write_text(PLAY)
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"),
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": "/tmp/.ansible",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "0",
    }
    playbook = Path(sys.executable).parent / "ansible-playbook"
    cmd = [str(playbook), "-i", str(work / "inventory.ini"), "-e", f"@{work / 'vars.json'}", str(work / "play.yml")]
    with log.open("w") as fh:
        subprocess.run(cmd, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True, timeout=3600)
