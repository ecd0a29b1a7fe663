"""``edge-node bench`` as a user runs it on a Pi: every configuration timed, a table, a JSON file, auto's pick."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.paths import clean_env, run_cli


def test_bench_measures_every_configuration_and_says_what_auto_would_choose(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = clean_env(HOME=str(tmp_path), EDGE_MODEL__THREADS="2")
    run = run_cli("bench", str(tiny_bundle), "--seconds", "0.2", "--out", str(out), env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    seen = {(t["runtime"], t["precision"], t["resolution"], t["workers"], t["threads"]) for t in report["trials"]}
    assert seen == {("onnxruntime", "int8", r, w, 2 // w) for r in (224, 192, 160) for w in (1, 2)}
    assert all(t["fps"] > 0 and t["latency_ms"] > 0 and t["cpu_ms"] > 0 for t in report["trials"])
    auto = report["auto"]
    assert auto["resolution"] == 224 and auto["workers"] * auto["threads"] == 2
    assert report["device"]["machine"] and report["device"]["onnxruntime"]
    assert "auto would serve with onnxruntime int8" in run.stdout and "<- auto" in run.stdout


def test_bench_without_a_bundle_measures_the_shipped_demo_bundle(tmp_path: Path) -> None:
    """The demo bundle ships in the package (no build, no cache): with no bundle given or configured, that is
    what a new user's ``edge-node bench`` measures."""
    from edge_node.modelzoo.demo import DEMO_RECIPE

    out = tmp_path / "bench.json"
    env = clean_env(HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path))
    run = run_cli("bench", "--seconds", "0.2", "--out", str(out), env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert (report["bundle"]["name"], report["bundle"]["version"]) == (DEMO_RECIPE["name"], DEMO_RECIPE["version"])
    assert report["trials"] and "auto would serve with" in run.stdout
