"""Under ``CI=true`` a skipped test is a failed test: CI must not go green with a whole feature untested.

A person's local run may skip what this machine cannot do (no chromium, no nats-server, no ImageNet sample,
no package index), and says why (``-rs``). In CI, .ci/run installs what the tests need; a skip there means it
could not, and the run fails with the skip's reason. Both kinds of skip are caught: a test's own
(``pytest.skip``, a ``skipif`` marker, a fixture that skips, ``importorskip`` inside a test) and a module's
(``importorskip`` or ``pytest.skip(allow_module_level=True)`` at import, which becomes a collection error).
An expected failure (``xfail``) is not a skip and stays as it is.

tests/conftest.py imports the two hooks; tests/test_ci_gate.py runs them on scratch test files.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping

import pytest

__all__ = ["ci_forbids_skips", "pytest_make_collect_report", "pytest_runtest_makereport", "skip_reason"]


def ci_forbids_skips(environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``CI`` is set to a true value (``true``, ``1``, ``yes``), as CI systems do."""
    return environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_reason(longrepr: object) -> str:
    """The reason of a skip report (pytest keeps skips as ``(path, line, "Skipped: reason")``)."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _failure(where: str, reason: str) -> str:
    return (
        f"{where} was skipped, and CI=true forbids skips: {reason}\n"
        "CI must run every feature: install what it needs (.ci/run installs the system packages, scripts/test.sh "
        "the Python extras). Run without CI=true to allow skips on your own machine."
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and ci_forbids_skips():
        report.outcome = "failed"
        report.longrepr = _failure(item.nodeid, skip_reason(report.longrepr))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if report.skipped and ci_forbids_skips():
        report.outcome = "failed"
        report.longrepr = _failure(f"{collector.nodeid} (the whole module)", skip_reason(report.longrepr))
    return report
