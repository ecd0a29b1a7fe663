"""The node decides on the device which runtime, precision and workers x threads serve, and remembers it."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_node.bundle import open_bundle
from edge_node.config import ModelConfig
from edge_node.errors import InferenceError
from edge_node.node.mapping import device_choice
from edge_node.vision.selection import choose, worker_splits


def test_threads_are_split_every_even_way() -> None:
    assert worker_splits(4, None) == [(1, 4), (2, 2), (4, 1)]
    assert worker_splits(2, None) == [(1, 2), (2, 1)]
    assert worker_splits(4, 2) == [(2, 2)]
    assert worker_splits(1, 3) == [(3, 1)]  # more workers than threads: one thread each


def test_auto_workers_are_measured_once_then_remembered(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = open_bundle(tiny_bundle)
    cfg = ModelConfig(threads=2, workers="auto")
    cache = tmp_path / "device-choice.json"
    first = choose(bundle, cfg, resolution=224, cache=cache, seconds=0.3)
    assert first.measured and not first.cached
    assert {(t.candidate.workers, t.candidate.threads) for t in first.trials} == {(1, 2), (2, 1)}
    assert all(t.fps > 0 and t.latency_ms > 0 and t.cpu_ms > 0 and t.resolution == 224 for t in first.trials)
    best = max(first.trials, key=lambda t: t.fps)
    assert first.candidate.workers * first.candidate.threads == 2
    assert first.candidate == best.candidate or best.fps * 0.97 <= max(
        t.fps for t in first.trials if t.candidate == first.candidate
    )  # the fastest, or one within 3 % of it with fewer workers
    again = choose(bundle, cfg, resolution=224, cache=cache)
    assert again.cached and again.candidate == first.candidate and again.trials == first.trials
    state = device_choice(first)
    assert state is not None and len(state.trials) == 2
    other = choose(bundle, ModelConfig(threads=2, workers="auto", top_k=3), resolution=160, cache=cache, seconds=0.2)
    assert other.cached  # top_k and the mode do not change what is fastest


def test_a_changed_setting_measures_again(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle, cache = open_bundle(tiny_bundle), tmp_path / "c.json"
    choose(bundle, ModelConfig(threads=2, workers="auto"), resolution=224, cache=cache, seconds=0.2)
    assert choose(bundle, ModelConfig(threads=1, workers="auto"), resolution=224, cache=cache).candidate.threads == 1


def test_explicit_settings_are_not_measured(tiny_bundle: Path) -> None:
    choice = choose(open_bundle(tiny_bundle), ModelConfig(threads=4, workers=2), resolution=224)
    assert not choice.measured and (choice.candidate.workers, choice.candidate.threads) == (2, 2)


def test_a_runtime_the_bundle_lacks_is_refused_with_what_it_has(tiny_bundle: Path) -> None:
    with pytest.raises(InferenceError, match="has files only for onnxruntime"):
        choose(open_bundle(tiny_bundle), ModelConfig(runtime="litert", threads=1, workers=1), resolution=224)


def _checked_bundle(
    tmp_path: Path, *, broken_int8: bool, precision: str = "both", max_divergence: float | None = None
) -> Path:
    from tests.support.bundles import make_tiny_bundle
    from tests.support.reference_bundles import add_reference, replace_int8

    tiny = make_tiny_bundle(tmp_path / "b", precision=precision)
    bundle = add_reference(tiny, min_agreement=0.9, max_divergence=max_divergence)
    return replace_int8(bundle) if broken_int8 else bundle


GATES = [None, 0.05]  # the top-1 gate of older bundles; the divergence gate


@pytest.mark.parametrize("max_divergence", GATES)
def test_an_int8_file_that_passes_its_reference_check_serves(tmp_path: Path, max_divergence: float | None) -> None:
    bundle = open_bundle(_checked_bundle(tmp_path, broken_int8=False, precision="int8", max_divergence=max_divergence))
    choice = choose(bundle, ModelConfig(threads=1, workers=1), resolution=224)
    assert choice.candidate.precision == "int8" and choice.note is None
    assert {c.resolution for c in choice.checks} == {224, 192, 160} and all(c.passed for c in choice.checks)
    assert all(
        c.max_divergence == max_divergence and (c.divergence is None) == (max_divergence is None) for c in choice.checks
    )


@pytest.mark.parametrize("max_divergence", GATES)
def test_an_int8_file_that_fails_on_this_device_falls_back_to_fp32_and_says_why(
    tmp_path: Path, max_divergence: float | None
) -> None:
    """The INT8 files have valid hashes (and a valid signature would not help): only the check catches them."""
    bundle = open_bundle(_checked_bundle(tmp_path, broken_int8=True, max_divergence=max_divergence))
    cache = tmp_path / "choice.json"
    choice = choose(bundle, ModelConfig(threads=1, workers=1), resolution=224, cache=cache)
    assert choice.candidate.precision == "fp32"
    assert (
        choice.note is not None
        and "fails its reference check" in choice.note
        and "serving onnxruntime fp32" in choice.note
    )
    assert any(not c.passed for c in choice.checks)
    remembered = choose(bundle, ModelConfig(threads=1, workers=1), resolution=224, cache=cache)
    assert remembered.cached and remembered.candidate.precision == "fp32" and remembered.note == choice.note
    state = device_choice(remembered)
    assert state is not None and state.note == choice.note and any(not c.passed for c in state.checks)


def test_with_nothing_accurate_an_update_is_refused_and_a_start_serves_the_closest(tmp_path: Path) -> None:
    from edge_node.errors import AccuracyError

    bundle = open_bundle(_checked_bundle(tmp_path, broken_int8=True, precision="int8"))
    with pytest.raises(AccuracyError, match="no FP32 files"):
        choose(bundle, ModelConfig(threads=1, workers=1), resolution=224, strict=True)
    choice = choose(bundle, ModelConfig(threads=1, workers=1), resolution=224)
    assert choice.candidate.precision == "int8" and choice.note is not None and "below its gate" in choice.note


def test_the_remembered_choices_survive_junk_and_keep_the_newest_16(tmp_path: Path) -> None:
    """The choice file is the node's own cache: a damaged one is measured over, never an error."""
    from edge_node.vision.choice import Candidate, Choice, Trial, recall, remember

    path = tmp_path / "state" / "device-choice.json"
    assert recall(path, "k0") is None  # no file yet
    path.parent.mkdir()
    path.write_text("{not json")
    assert recall(path, "k0") is None
    fast = Candidate("onnxruntime", "int8", 2, 1)
    for i in range(20):
        remember(path, f"k{i}", Choice(fast, trials=[Trial(fast, 224, 100.0 + i, 9.5, 19.0)]))
    assert recall(path, "k3") is None and recall(path, "k4") is not None
    back = recall(path, "k19")
    assert back is not None and back.cached and back.candidate == fast and back.trials[0].fps == 119.0
    path.write_text('{"k19": {"candidate": {"runtime": "onnxruntime"}}}')  # an older or damaged entry
    assert recall(path, "k19") is None


@pytest.mark.parametrize("spin", [False, True])
def test_the_spin_setting_reaches_the_served_sessions_and_the_choice(
    tiny_bundle: Path, tmp_path: Path, spin: bool
) -> None:
    """model.spin is measured as it will serve: a choice made with the other value is not reused."""
    from edge_node.runtimes.onnx import OrtSession
    from edge_node.vision.loading import select_model

    bundle, cache = open_bundle(tiny_bundle), tmp_path / "c.json"
    cfg = ModelConfig(runtime="onnxruntime", precision="fp32", threads=2, workers="auto", spin=spin)
    choose(bundle, cfg.model_copy(update={"spin": not spin}), resolution=160, cache=cache, seconds=0.2)
    model, choice = select_model(bundle, cfg, resolution=160, cache=cache)
    assert not choice.cached and model.spin is spin
    session = model.build(160).sessions[0]
    assert isinstance(session, OrtSession)
    allow = session._session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    assert allow == ("1" if spin else "0")
