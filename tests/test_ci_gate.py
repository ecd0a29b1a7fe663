"""The CI gate (tests/ci_gate.py) on scratch test files, each run by a real pytest with and without CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.ci_gate import ci_forbids_skips
from tests.support.paths import REPO

CONFTEST = "from tests.ci_gate import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401\n"
TESTS = """
import pytest


@pytest.fixture
def widget():
    pytest.skip("the widget is not installed")


def test_fixture_skips(widget):
    pass


def test_skips_itself():
    pytest.skip("no chromium here")


def test_imports_inside():
    pytest.importorskip("ghostpi_no_such_module_a")


@pytest.mark.skipif(True, reason="the marker says no")
def test_marked():
    pass


@pytest.mark.xfail(reason="a known bug")
def test_expected_failure():
    assert False


def test_passes():
    pass
"""
MODULE = 'import pytest\n\npytest.importorskip("ghostpi_no_such_module_b")\n\n\ndef test_never_collected():\n    pass\n'
REASONS = (
    "the widget is not installed",
    "no chromium here",
    "could not import 'ghostpi_no_such_module_a'",
    "the marker says no",
)


def _pytest(tmp_path: Path, files: dict[str, str], ci: str | None) -> tuple[int, str, dict[str, str]]:
    """Run pytest on ``files`` in a scratch folder; return (exit status, output, outcome by test name)."""
    folder = tmp_path / f"run-{ci}-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    for name, text in ({"conftest.py": CONFTEST} | files).items():
        (folder / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO)
    if ci is not None:
        env["CI"] = ci
    junit = folder / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", f"--junitxml={junit}", str(folder)]
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    outcomes: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name", "")] = kinds[0] if kinds else "passed"
    return done.returncode, done.stdout + done.stderr, outcomes


def test_locally_skips_stay_skips_and_say_why(tmp_path: Path) -> None:
    status, output, outcomes = _pytest(tmp_path, {"test_features.py": TESTS, "test_module.py": MODULE}, ci=None)
    assert status == 0, output
    assert outcomes == {
        "test_fixture_skips": "skipped",
        "test_skips_itself": "skipped",
        "test_imports_inside": "skipped",
        "test_marked": "skipped",
        "test_expected_failure": "skipped",  # junit's word for xfail
        "test_passes": "passed",
        "test_module": "skipped",  # the module that skips at import
    }
    assert all(reason in output for reason in (*REASONS, "ghostpi_no_such_module_b")), output


def test_under_ci_every_skip_fails_with_its_reason(tmp_path: Path) -> None:
    status, output, outcomes = _pytest(tmp_path, {"test_features.py": TESTS}, ci="true")
    assert status == 1, output
    assert outcomes["test_passes"] == "passed"
    assert outcomes["test_expected_failure"] == "skipped"  # an expected failure is not a skip
    assert outcomes["test_skips_itself"] == outcomes["test_imports_inside"] == "failure"  # failed in the test
    assert outcomes["test_fixture_skips"] == outcomes["test_marked"] == "error"  # failed in its setup
    for reason in REASONS:
        assert f"was skipped, and CI=true forbids skips: {reason}" in output, output


def test_under_ci_a_module_that_skips_at_import_fails_the_collection(tmp_path: Path) -> None:
    status, output, _ = _pytest(tmp_path, {"test_module.py": MODULE}, ci="true")
    assert status == 2, output  # interrupted: errors during collection
    assert "test_module.py (the whole module) was skipped, and CI=true forbids skips" in output, output
    assert "ghostpi_no_such_module_b" in output


@pytest.mark.parametrize(
    ("value", "strict"), [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("false", False), ("", False)]
)
def test_what_counts_as_ci(value: str, strict: bool) -> None:
    assert ci_forbids_skips({"CI": value}) is strict
    assert not ci_forbids_skips({})
