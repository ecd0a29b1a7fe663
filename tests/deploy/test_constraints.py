"""deploy/constraints/: one pinned set per deployment target, complete, and installable from wheels there.

The download test asks the package index, as pip on the node would (``pip download --only-binary=:all:`` with
the target's Python and every manylinux tag its glibc accepts), and skips with the reason when the index
cannot be reached.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

from tests.support.constraints import DIR as CONSTRAINTS
from tests.support.constraints import constraints, header
from tests.support.paths import REPO


def test_one_file_per_target_with_the_targets_python_and_numpy() -> None:
    files = sorted(p.stem for p in (CONSTRAINTS).glob("*.txt"))
    assert files == sorted(constraints.TARGETS)
    for name, target in constraints.TARGETS.items():
        path = CONSTRAINTS / f"{name}.txt"
        found = header(path)
        assert found["python"] == target.python
        assert found.get("system-numpy") == target.numpy
        pins = constraints.read_pins(path)
        assert ("numpy" in pins) is (target.numpy is None), "numpy is pinned only where it does not come from apt"
        for requirement in constraints.requirements():  # every direct dependency is pinned
            name_only = constraints._norm(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])
            assert name_only in pins or (name_only == "numpy" and target.numpy), f"{name}: {name_only} is not pinned"


def test_the_recorders_extra_is_pinned_for_every_target() -> None:
    """The recorder role installs edge-node[record] with its target's file: psycopg (and the psycopg-binary its
    [binary] extra pulls in) and nats-py must be pinned there too, or a recorder gets whatever is newest."""
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    record = [Requirement(r) for r in project["optional-dependencies"]["record"]]
    wanted = {constraints._norm(r.name) for r in record} | {
        constraints._norm(f"{r.name}-{extra}") for r in record for extra in r.extras
    }
    assert wanted >= {"psycopg", "psycopg-binary", "nats-py"}
    for name in constraints.TARGETS:
        pins = constraints.read_pins(CONSTRAINTS / f"{name}.txt")
        assert wanted <= set(pins), f"{name}: {sorted(wanted - set(pins))} not pinned"
        for requirement in record:
            assert requirement.specifier.contains(pins[constraints._norm(requirement.name)]), (name, str(requirement))


def test_system_numpy_targets_keep_a_numpy_the_project_accepts() -> None:
    """The package's own lower bound must admit Bookworm's apt numpy, or pip would replace it in the venv."""
    from packaging.requirements import Requirement

    [numpy] = [Requirement(r) for r in constraints.requirements() if r.startswith("numpy")]
    for target in constraints.TARGETS.values():
        if target.numpy is not None:
            assert numpy.specifier.contains(target.numpy), (target.name, str(numpy.specifier))


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("target", sorted(constraints.TARGETS))
def test_every_pin_downloads_as_a_wheel_for_its_platform(target: str) -> None:
    script = REPO / "scripts" / "constraints.py"
    out = subprocess.run(
        [sys.executable, str(script), "--check", target], capture_output=True, text=True, timeout=540, check=False
    )
    if out.returncode == constraints.UNREACHABLE:
        pytest.skip(f"the package index cannot be reached: {out.stderr.strip().splitlines()[-1][:200]}")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "match the pins" in out.stdout
