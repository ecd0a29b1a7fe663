"""The on-disk bundle store: fallbacks at start-up, atomic state, garbage collection, id memory."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edge_node.bundle.archive import pack
from edge_node.errors import BundleError, UpdateError
from edge_node.ota.store import FACTORY, MAX_IDS, BundleStore, slot_name
from tests.support.bundles import make_tiny_bundle

SHA_A = "a" * 64
SHA_B = "b" * 64


@pytest.fixture
def factory(tmp_path: Path) -> Path:
    return make_tiny_bundle(tmp_path / "factory", version="0.9.0", resolutions=(64,))


def _install(store: BundleStore, tmp_path: Path, version: str, sha: str) -> str:
    slot = slot_name(version, sha)
    src = make_tiny_bundle(store.staging / f"unpack-{version}", version=version, resolutions=(64,))
    store.install(src, slot)
    store.commit(slot, store.open_slot(slot))
    return slot


def test_fresh_store_starts_on_the_factory_bundle(tmp_path: Path, factory: Path) -> None:
    store = BundleStore(tmp_path / "ota", factory)
    bundle, source = store.startup()
    assert (source, bundle.manifest.version, store.running.slot) == ("factory", "0.9.0", FACTORY)
    assert store.previous is None


def test_factory_archive_is_unpacked_inside_the_store(tmp_path: Path, factory: Path) -> None:
    archive = pack(factory, tmp_path / "factory.tar.gz")
    shutil.rmtree(factory)
    store = BundleStore(tmp_path / "ota", archive)
    bundle, _ = store.startup()
    assert (tmp_path / "ota") in bundle.path.parents


def test_commit_survives_a_restart_and_keeps_one_previous(tmp_path: Path, factory: Path) -> None:
    store = BundleStore(tmp_path / "ota", factory)
    store.startup()
    a = _install(store, tmp_path, "1.0.0", SHA_A)
    assert store.previous == FACTORY
    b = _install(store, tmp_path, "2.0.0", SHA_B)
    assert store.previous == a
    state = json.loads((tmp_path / "ota" / "state.json").read_text())
    assert (state["active"], state["previous"]) == (b, a)
    assert sorted(p.name for p in store.bundles.iterdir()) == sorted([a, b])

    again = BundleStore(tmp_path / "ota", factory)
    bundle, source = again.startup()
    assert (source, bundle.manifest.version) == ("active", "2.0.0")
    c = _install(again, tmp_path, "3.0.0", SHA_A.replace("a", "c"))
    assert sorted(p.name for p in again.bundles.iterdir()) == sorted([b, c])  # 1.0.0 collected


def test_corrupt_active_falls_back_to_previous_then_factory(tmp_path: Path, factory: Path) -> None:
    store = BundleStore(tmp_path / "ota", factory)
    store.startup()
    a = _install(store, tmp_path, "1.0.0", SHA_A)
    b = _install(store, tmp_path, "2.0.0", SHA_B)
    with (store.bundles / b / "labels.txt").open("a") as fh:
        fh.write("tampered\n")
    bundle, source = BundleStore(tmp_path / "ota", factory).startup()
    assert (source, bundle.manifest.version) == ("previous", "1.0.0")

    shutil.rmtree(store.bundles / a)
    bundle, source = BundleStore(tmp_path / "ota", factory).startup()
    assert (source, bundle.manifest.version) == ("factory", "0.9.0")


@pytest.mark.parametrize("content", [b"{not json", b'{"active": "../../etc"}', b""])
def test_corrupt_state_file_starts_on_factory(tmp_path: Path, factory: Path, content: bytes) -> None:
    (tmp_path / "ota").mkdir()
    (tmp_path / "ota" / "state.json").write_bytes(content)
    _, source = BundleStore(tmp_path / "ota", factory).startup()
    assert source == "factory"


def test_no_usable_bundle_at_all_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no usable model bundle"):
        BundleStore(tmp_path / "ota", tmp_path / "missing").startup()


def test_startup_cleans_staging_but_keeps_the_newest_partial_download(tmp_path: Path, factory: Path) -> None:
    """Every interrupted update used to leave its .part for good; now only the newest (the one an interrupted
    update resumes) survives a restart."""
    store = BundleStore(tmp_path / "ota", factory)
    for age, name in enumerate(["new", "old", "older"]):
        part = store.staging / f"{name}.tar.gz.part"
        part.write_bytes(b"123")
        os.utime(part, ns=(10**18 - age * 10**12, 10**18 - age * 10**12))
    (store.staging / "unpack-x").mkdir()
    (store.staging / "x.tar.gz").write_bytes(b"123")
    (store.root / ".state.json.abc123.tmp").write_bytes(b"{")  # a state write cut short
    (store.bundles / slot_name("5.0.0", SHA_A)).mkdir()  # installed, never committed (kill -9)
    store.startup()
    assert [p.name for p in store.staging.iterdir()] == ["new.tar.gz.part"]
    assert list(store.bundles.iterdir()) == []
    assert sorted(p.name for p in store.root.iterdir()) == ["bundles", "staging"]


def test_unsafe_versions_never_become_paths(tmp_path: Path) -> None:
    for bad in ("../x", "/etc", "a/b", "", ".", "..", "-x", "x" * 65):
        with pytest.raises(UpdateError):
            slot_name(bad, SHA_A)
    with pytest.raises(UpdateError):
        slot_name("1.0", "../" + "a" * 61)
    assert slot_name("1.0.0+rc.1", SHA_A) == "1.0.0+rc.1-" + "a" * 16


def test_active_and_previous_cannot_be_overwritten(tmp_path: Path, factory: Path) -> None:
    store = BundleStore(tmp_path / "ota", factory)
    store.startup()
    a = _install(store, tmp_path, "1.0.0", SHA_A)
    with pytest.raises(UpdateError, match="already installed"):
        store.install(store.staging, a)
    store.discard(a)
    assert (store.bundles / a).is_dir()


def test_command_ids_are_remembered_across_restarts_and_bounded(tmp_path: Path, factory: Path) -> None:
    store = BundleStore(tmp_path / "ota", factory)
    store.startup()
    store.remember("first", True)
    store.remember("second", False)
    again = BundleStore(tmp_path / "ota", factory)
    assert (again.outcome("first"), again.outcome("second"), again.outcome("third")) == (True, False, None)
    for i in range(MAX_IDS + 5):
        again.remember(f"id{i}", True)
    assert again.outcome("first") is None and again.outcome(f"id{MAX_IDS + 4}") is True
