"""scripts/test.sh (the README's test command, and CI's) stops at the first lint, format or type finding, before
any test runs.

It once ran ``ruff check . && ruff format --check .`` under ``set -e``: bash does not stop when a command that is
not the last of an ``&&`` list fails, so ruff's findings were printed and ignored. And mypy checked only
edge_node/. Here the repository's own scripts and pyproject.toml run against a scratch tree with one planted
finding; the venv's ``python`` is a stub that records what it is asked to do (so nothing is installed and no test
suite runs), ``ruff`` and ``mypy`` are the real ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

CLEAN = {
    "edge_node/__init__.py": '"""A package."""\n',
    "edge_node/ok.py": "def twice(x: int) -> int:\n    return 2 * x\n",
    "tests/__init__.py": "",
    "tests/test_ok.py": "def test_ok() -> None:\n    assert True\n",
    "bench/__init__.py": "",
}
MISTYPED = 'def count() -> int:\n    return "three"\n'


def _tree(tmp_path: Path, planted: dict[str, str]) -> Path:
    root = tmp_path / "repo"
    # The arm64 lane stays out: its modules import the node's packages, which the scratch tree does not have.
    shutil.copytree(REPO / "scripts", root / "scripts", ignore=shutil.ignore_patterns("__pycache__", "arm64lane"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    for name, text in (CLEAN | planted).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _venv(tmp_path: Path, log: Path) -> Path:
    """A venv whose python only records its arguments; ruff and mypy run from this test's interpreter."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    tools = {
        "python": f'#!/bin/sh\necho "python $*" >> "{log}"\n',
        "ruff": f'#!/bin/sh\nexec "{sys.executable}" -m ruff "$@"\n',
        "mypy": f'#!/bin/sh\nexec "{sys.executable}" -m mypy "$@"\n',
        "mosquitto": "#!/bin/sh\nexit 0\n",  # test.sh only checks that one is installed
    }
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir.parent


def _test_sh(tmp_path: Path, planted: dict[str, str]) -> tuple[int, str, list[str]]:
    """Run the scratch tree's scripts/test.sh; return (exit status, its output, the stub python's calls)."""
    root, log = _tree(tmp_path, planted), tmp_path / "python-calls.log"
    venv = _venv(tmp_path, log)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(GHOSTPI_VENV=str(venv), PATH=f"{venv / 'bin'}:{env['PATH']}", MYPY_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run(
        ["bash", str(root / "scripts" / "test.sh"), "-k", "marker"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return done.returncode, done.stdout + done.stderr, calls


def _pytest_ran(calls: list[str]) -> bool:
    return any(call.startswith("python -m pytest") for call in calls)


@pytest.mark.parametrize(
    ("planted", "finding", "reached_mypy"),
    [
        ({"edge_node/extra.py": "import os\n"}, "F401", False),  # ruff check: an unused import
        ({"edge_node/extra.py": "values = [1,2]\n"}, "1 file would be reformatted", False),  # ruff format --check
        ({"tests/test_extra.py": MISTYPED}, "Incompatible return value type", True),  # mypy covers tests/
        ({"bench/extra.py": MISTYPED}, "Incompatible return value type", True),  # ... bench/
        ({"scripts/extra.py": MISTYPED}, "Incompatible return value type", True),  # ... and scripts/
    ],
    ids=["ruff-check", "ruff-format", "mypy-tests", "mypy-bench", "mypy-scripts"],
)
def test_a_finding_stops_test_sh_before_pytest(
    tmp_path: Path, planted: dict[str, str], finding: str, reached_mypy: bool
) -> None:
    status, output, calls = _test_sh(tmp_path, planted)
    assert status != 0, output
    assert finding in output, output
    assert ("== mypy" in output) == reached_mypy, output  # the first failing step is the last that ran
    assert not _pytest_ran(calls), calls


def test_a_clean_tree_goes_on_to_pytest_with_the_arguments(tmp_path: Path) -> None:
    """The other side: the stubs work, and a tree without findings reaches pytest (so the tests above can fail)."""
    status, output, calls = _test_sh(tmp_path, {})
    assert status == 0, output
    assert "== mypy" in output and "Success: no issues found" in output
    assert "python -m pytest -q -ra -n 2 --dist loadfile --durations=25 -k marker" in calls, calls
