"""The Ansible tree passes ansible-lint's production profile offline, and every playbook parses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

ANSIBLE = REPO / "deploy" / "ansible"
BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ansible_lint_production_profile() -> None:
    if not (BIN / "ansible-lint").exists():
        pytest.skip("ansible-lint is not installed (dev extra)")
    out = subprocess.run(
        [str(BIN / "ansible-lint"), "--offline", "--profile", "production", "deploy/ansible"],
        cwd=REPO, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]


@pytest.mark.parametrize("playbook", ["site.yml", "nodes.yml", "broker.yml", "models.yml", "record.yml"])
def test_playbook_syntax(playbook: str) -> None:
    if not (BIN / "ansible-playbook").exists():
        pytest.skip("ansible is not installed (dev extra)")
    out = subprocess.run(
        [str(BIN / "ansible-playbook"), "--syntax-check", playbook],
        cwd=ANSIBLE, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
