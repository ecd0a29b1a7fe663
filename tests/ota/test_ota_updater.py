"""The Updater on a live pipeline (30 fps synthetic camera, real ORT) fed by a real loopback HTTP server.

Every fault must leave the node predicting on its last good model and say why on events/ota.
"""

from __future__ import annotations

import asyncio
import functools
import io
import itertools
import logging
import os
import statistics
import tarfile
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_node.bundle.archive import MAX_MEMBERS, pack
from edge_node.bundle.manifest import MANIFEST, SIGNATURE
from edge_node.config import ModelConfig, OtaConfig
from edge_node.messages import Event, Rollback, UpdateModel
from edge_node.ota.download import sha256_file
from edge_node.ota.store import FACTORY, BundleStore
from tests.support.archives import Entry, million_directories, write_archive
from tests.support.bundles import make_keys, make_tiny_bundle
from tests.support.fswatch import watch_writes
from tests.support.ota_harness import LiveNode, live_node
from tests.support.ota_http import FaultServer, serving

pytestmark = pytest.mark.timeout(60)

RES = (64, 48)


def _sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (pytest sees the wrapped signature for fixtures)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(trusted private key, its public key, an untrusted private key)."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, FaultServer]]:
    root = tmp_path / "site"
    root.mkdir()
    with serving(root, faults=True) as srv:
        yield root, srv


@pytest.fixture
def factory(tmp_path: Path, keys: tuple[Path, Path, Path]) -> Path:
    return make_tiny_bundle(tmp_path / "factory", version="1.0.0", resolutions=RES, key=keys[0])


def _cfg(pub: Path | None, **kw: object) -> OtaConfig:
    base: dict[str, object] = {
        "trusted_keys": [pub] if pub else [],
        "allow_http": True,
        "download_timeout": 1.0,
        "download_attempts": 2,
        "health_frames": 8,
        "health_max_latency_ms": 25.0,
        "health_timeout": 10.0,
    }
    base.update(kw)
    return OtaConfig(**base)


def _publish(site: tuple[Path, FaultServer], bundle: Path, name: str | None = None) -> tuple[str, str]:
    """Pack ``bundle`` into the site; return (url, sha256)."""
    root, srv = site
    archive = pack(bundle, root / (name or f"{bundle.name}.tar.gz"))
    return f"{srv.url}/{archive.name}", sha256_file(archive)


def _cmd(url: str, sha: str, version: str, **kw: Any) -> UpdateModel:
    return UpdateModel(cmd="update_model", id=uuid.uuid4().hex[:8], url=url, sha256=sha, version=version, **kw)


async def _failed_cleanly(node: LiveNode, cmd: UpdateModel, stage: str, match: str) -> Event:
    """The last event reports the failure; the node still predicts on 1.0.0 and the store is unchanged."""
    ev = node.sink.events[-1]
    assert (ev.id, ev.ok, ev.detail and ev.detail["stage"]) == (cmd.id, False, stage), ev
    assert ev.error is not None and match in ev.error, ev.error
    assert node.sink.statuses[-1].phase in ("failed", "rolled_back")
    await node.predictions_on("1.0.0")
    assert node.serving == "1.0.0" and node.store.running.slot == FACTORY
    assert list(node.store.bundles.iterdir()) == []
    assert [p.name for p in node.store.staging.iterdir()] == []
    return ev


@_sync
async def test_update_commits_and_survives_restart(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer]
) -> None:
    url, sha = _publish(site, make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES, key=keys[0]))
    async with live_node(tmp_path / "ota", factory, _cfg(keys[1])) as node:
        cmd = _cmd(url, sha, "2.0.0")
        await node.updater.handle(cmd)
        (ev,) = node.sink.events
        assert ev.ok and ev.id == cmd.id, ev
        assert ev.detail is not None and ev.detail["previous"] == "1.0.0" and ev.detail["signed_by"]
        phases = node.sink.phases()
        assert phases[0] == "downloading" and phases[-3:] == ["verifying", "activating", "active"]
        assert node.sink.statuses[-1].version == "2.0.0"
        await node.predictions_on("2.0.0")
        assert node.updater.model_source == "active" and node.store.previous == FACTORY
    bundle, source = BundleStore(tmp_path / "ota", factory).startup()
    assert (bundle.manifest.version, source) == ("2.0.0", "active")


@pytest.mark.parametrize(
    ("key", "broken", "stage", "match"),
    [
        ("rogue", None, "verify", "does not verify with any of the 1 trusted key"),
        (None, None, "verify", "is not signed"),
        ("trusted", "hash", "verify", "corrupt or was modified"),
        ("trusted", "labels", "verify", "labels"),
        ("trusted", "not_onnx", "warmup", "ONNX Runtime cannot load"),
        ("trusted", "nan", "warmup", "non-finite"),
        ("trusted", "shape", "warmup", "output shape"),
    ],
)
@_sync
async def test_bad_bundles_never_replace_the_model(
    tmp_path: Path,
    factory: Path,
    keys: tuple[Path, Path, Path],
    site: tuple[Path, FaultServer],
    key: str | None,
    broken: str | None,
    stage: str,
    match: str,
) -> None:
    signer = {"trusted": keys[0], "rogue": keys[2], None: None}[key]
    bundle = make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES, key=signer, broken=broken)
    url, sha = _publish(site, bundle)
    async with live_node(tmp_path / "ota", factory, _cfg(keys[1])) as node:
        cmd = _cmd(url, sha, "2.0.0")
        await node.updater.handle(cmd)
        await _failed_cleanly(node, cmd, stage, match)


@_sync
async def test_slow_model_fails_health_check_and_rolls_back(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer]
) -> None:
    bundle = make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=(224,), key=keys[0], broken="slow")
    url, sha = _publish(site, bundle)
    async with live_node(tmp_path / "ota", factory, _cfg(keys[1], health_frames=4)) as node:
        cmd = _cmd(url, sha, "2.0.0")
        await node.updater.handle(cmd)
        ev = await _failed_cleanly(node, cmd, "health", "failed its health check (median latency")
        assert ev.detail is not None and ev.detail["phase"] == "rolled_back" and ev.detail["serving"] == "1.0.0"
        assert node.sink.statuses[-1].phase == "rolled_back"
        assert "2.0.0" in {v for _, v in node.results}  # it did serve, then was taken back


@pytest.mark.parametrize(
    ("change", "stage", "match"),
    [
        ("404", "download", "HTTP 404"),
        ("sha", "download", "sha256"),
        ("oversize", "download", "limit"),
        ("version", "verify", "manifest says version 2.0.0, the command said 3.0.0"),
        ("cut", "download", "after 2 attempt"),
    ],
)
@_sync
async def test_download_and_manifest_faults(
    tmp_path: Path,
    factory: Path,
    keys: tuple[Path, Path, Path],
    site: tuple[Path, FaultServer],
    change: str,
    stage: str,
    match: str,
) -> None:
    url, sha = _publish(site, make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES, key=keys[0]))
    version, cfg = "2.0.0", _cfg(keys[1])
    if change == "404":
        url += ".missing"
    elif change == "sha":
        sha = "0" * 64
    elif change == "oversize":
        cfg = _cfg(keys[1], max_bundle_bytes=1024)
    elif change == "version":
        version = "3.0.0"
    elif change == "cut":
        site[1].faults = ["cut", "cut", "cut"]
    async with live_node(tmp_path / "ota", factory, cfg) as node:
        cmd = _cmd(url, sha, version)
        await node.updater.handle(cmd)
        if change == "cut":  # the partial file stays for a later resume; then it succeeds
            (part,) = node.store.staging.iterdir()
            assert part.name.endswith(".part") and part.stat().st_size > 0
            part.unlink()
        await _failed_cleanly(node, cmd, stage, match)


def _evil_archive(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        if kind == "dotdot":
            info = tarfile.TarInfo("../escape.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
        else:
            info = tarfile.TarInfo("manifest.json")
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "symlink"])
@_sync
async def test_archive_with_unsafe_entries_is_refused(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer], kind: str
) -> None:
    root, srv = site
    archive = _evil_archive(root / "evil.tar.gz", kind)
    async with live_node(tmp_path / "ota", factory, _cfg(keys[1])) as node:
        cmd = _cmd(f"{srv.url}/evil.tar.gz", sha256_file(archive), "2.0.0")
        await node.updater.handle(cmd)
        await _failed_cleanly(node, cmd, "verify", "unsafe path" if kind == "dotdot" else "link")
    assert not (tmp_path / "ota" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()


@_sync
async def test_rollback_toggles_between_the_last_two_bundles(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer]
) -> None:
    url, sha = _publish(site, make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES, key=keys[0]))
    async with live_node(tmp_path / "ota", factory, _cfg(keys[1])) as node:
        await node.updater.handle(Rollback(cmd="rollback", id="r0"))
        assert not node.sink.events[-1].ok and "no previous bundle" in (node.sink.events[-1].error or "")
        await node.updater.handle(_cmd(url, sha, "2.0.0"))
        await node.updater.handle(Rollback(cmd="rollback", id="r1"))
        ev = node.sink.events[-1]
        assert ev.ok and ev.detail == {"version": "1.0.0", "from": "2.0.0", "model_source": "factory"}
        await node.predictions_on("1.0.0")
        assert node.sink.statuses[-1].phase == "rolled_back"
        await node.updater.handle(Rollback(cmd="rollback", id="r2"))
        assert node.sink.events[-1].ok
        await node.predictions_on("2.0.0")
    _, source = BundleStore(tmp_path / "ota", factory).startup()
    assert source == "active"


@_sync
async def test_same_id_runs_once_even_after_restart(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer]
) -> None:
    url, sha = _publish(site, make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES, key=keys[0]))
    cmd = _cmd(url, sha, "2.0.0")
    async with live_node(tmp_path / "ota", factory, _cfg(keys[1])) as node:
        await node.updater.handle(cmd)
        await node.updater.handle(cmd)
        first, second = node.sink.events
        assert first.ok and second.ok and second.detail == {"duplicate": True}
    async with live_node(tmp_path / "ota", factory, _cfg(keys[1])) as node:
        await node.updater.handle(cmd)
        assert node.sink.events[-1].detail == {"duplicate": True}
    assert len(site[1].requests) == 1


@_sync
async def test_one_update_at_a_time(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer]
) -> None:
    url, sha = _publish(site, make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES, key=keys[0]))
    site[1].faults = ["stall"]
    site[1].stall_seconds = 1.5
    async with live_node(tmp_path / "ota", factory, _cfg(keys[1])) as node:
        first, second = _cmd(url, sha, "2.0.0"), _cmd(url, sha, "2.0.0")
        await asyncio.gather(node.updater.handle(first), node.updater.handle(second))
        by_id = {e.id: e for e in node.sink.events}
        assert by_id[first.id].ok
        assert not by_id[second.id].ok and "in progress" in (by_id[second.id].error or "")


@_sync
async def test_no_trusted_keys_means_no_updates(tmp_path: Path, factory: Path, site: tuple[Path, FaultServer]) -> None:
    url, sha = _publish(site, make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES))
    async with live_node(tmp_path / "ota", factory, _cfg(None)) as node:
        cmd = _cmd(url, sha, "2.0.0")
        await node.updater.handle(cmd)
        assert "no trusted keys" in (node.sink.events[-1].error or "")
        assert site[1].requests == []


@_sync
async def test_allow_unsigned_installs_unsigned_bundles_with_a_warning(
    tmp_path: Path, factory: Path, site: tuple[Path, FaultServer], caplog: pytest.LogCaptureFixture
) -> None:
    url, sha = _publish(site, make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES))
    with caplog.at_level(logging.WARNING):
        async with live_node(tmp_path / "ota", factory, _cfg(None, allow_unsigned_models=True)) as node:
            await node.updater.handle(_cmd(url, sha, "2.0.0"))
            assert node.sink.events[-1].ok
            await node.predictions_on("2.0.0")
    assert "ALLOW_UNSIGNED_MODELS is set" in caplog.text


@pytest.mark.parametrize("workers", [1, 2])
@_sync
async def test_swap_keeps_predictions_flowing(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer], workers: int
) -> None:
    """No pause during activation, with one worker or several: no gap around the swap above twice the interval the
    same run showed before it (bench/ota_swap.py measures the ratio), and frame numbers keep growing."""
    url, sha = _publish(site, make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES, key=keys[0]))
    model = ModelConfig(threads=workers, workers=workers)
    async with live_node(tmp_path / "ota", factory, _cfg(keys[1]), model=model) as node:
        quiet = len(node.results)
        await asyncio.sleep(2.0)
        gaps = sorted(b - a for (a, _), (b, _) in itertools.pairwise(node.results[quiet:]))
        normal = max(statistics.median(gaps), gaps[int(len(gaps) * 0.95)])
        start = len(node.results)
        await node.updater.handle(_cmd(url, sha, "2.0.0"))
        await node.predictions_on("2.0.0", 5)
        times = [t for t, _ in node.results[start:]]
        switch = next(i for i, (_, v) in enumerate(node.results) if v == "2.0.0")
        assert node.results[switch - 1][1] == "1.0.0"
        worst = max(b - a for a, b in itertools.pairwise(times))
        assert worst <= 2 * normal, f"worst gap {worst * 1000:.0f} ms, normal {normal * 1000:.0f} ms"
        assert node.seqs == sorted(node.seqs) and len(set(node.seqs)) == len(node.seqs)


@_sync
async def test_the_next_update_can_follow_the_answer_at_once(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer]
) -> None:
    """An operator (or ctl, or a rollout) sends the next command the moment an answer arrives. The answer used to
    go out while the updater still counted itself busy, so that command was refused as "in progress"."""
    url2, sha2 = _publish(site, make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES, key=keys[0]))
    url3, sha3 = _publish(site, make_tiny_bundle(tmp_path / "b3", version="3.0.0", resolutions=RES, key=keys[0]))
    second = _cmd(url3, sha3, "3.0.0")
    follow: list[asyncio.Task[None]] = []
    async with live_node(tmp_path / "ota", factory, _cfg(keys[1])) as node:

        def on_event(ev: Event) -> None:
            if ev.id != second.id and not follow:
                follow.append(asyncio.ensure_future(node.updater.handle(second)))

        node.sink.on_event = on_event
        await node.updater.handle(_cmd(url2, sha2, "2.0.0"))
        await follow[0]
        answers = {e.id: e for e in node.sink.events}
        assert answers[second.id].ok, answers[second.id]
        await node.predictions_on("3.0.0")


@_sync
async def test_an_update_whose_int8_fails_its_check_here_serves_fp32_or_is_refused(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer]
) -> None:
    """Before an update commits, the node runs the new INT8 files on the bundle's reference set: with FP32 files
    to fall back to it serves those and says why; without, it refuses the update and keeps its model."""
    from tests.support.reference_bundles import add_reference, replace_int8

    with_fp32 = make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES, precision="both")
    url2, sha2 = _publish(site, replace_int8(add_reference(with_fp32, key=keys[0]), key=keys[0]))
    int8_only = make_tiny_bundle(tmp_path / "b3", version="3.0.0", resolutions=RES)
    url3, sha3 = _publish(site, replace_int8(add_reference(int8_only, key=keys[0]), key=keys[0]))
    async with live_node(tmp_path / "ota", factory, _cfg(keys[1])) as node:
        await node.updater.handle(_cmd(url2, sha2, "2.0.0"))
        ok = node.sink.events[-1]
        assert ok.ok and ok.detail is not None and ok.detail["serving"] == "onnxruntime fp32"
        assert "fails its reference check" in str(ok.detail["note"])
        await node.predictions_on("2.0.0")
        assert node.pipeline.model.info.precision == "fp32"
        await node.updater.handle(_cmd(url3, sha3, "3.0.0"))
        refused = node.sink.events[-1]
        assert not refused.ok and refused.detail is not None and refused.detail["stage"] == "check"
        assert "no FP32 files" in (refused.error or "") and node.serving == "2.0.0"


# --- issue 16: nothing written before it is trusted, bounded archives, downgrades, keys without signatures ---


class _PeakRss:
    """Samples this process's resident memory every few milliseconds while a block runs."""

    def __init__(self) -> None:
        self.baseline = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@_sync
async def test_a_million_directory_headers_are_refused_at_the_cap_with_bounded_memory(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer]
) -> None:
    """2 MB of gzip, 512 MB of tar headers; its sha256 only has to match the command. The old reader skipped
    directories uncounted and tarfile kept every header: ~50 s and ~400 MB of RSS before it even looked for a
    manifest. Now every header counts, one is held at a time, and the node stops at the cap."""
    root, srv = site
    archive = million_directories(root / "dirs.tar.gz")
    async with live_node(tmp_path / "ota", factory, _cfg(keys[1])) as node:
        cmd = _cmd(f"{srv.url}/dirs.tar.gz", sha256_file(archive), "2.0.0")
        with _PeakRss() as memory:
            await node.updater.handle(cmd)
        await _failed_cleanly(node, cmd, "verify", f"more than {MAX_MEMBERS} entries")
        assert memory.growth_mb < 40, f"resident memory grew {memory.growth_mb:.0f} MB while refusing the archive"


async def _refused(
    tmp_path: Path, factory: Path, cfg: OtaConfig, url: str, sha: str, stage: str, match: str
) -> list[str]:
    """Run one update to 2.0.0 that must fail cleanly; return what was written below the store meanwhile."""
    async with live_node(tmp_path / "ota", factory, cfg) as node:
        cmd = _cmd(url, sha, "2.0.0")
        with watch_writes(tmp_path / "ota") as writes:
            await node.updater.handle(cmd)
        await _failed_cleanly(node, cmd, stage, match)
    return writes


@_sync
async def test_a_forged_bundle_is_refused_before_anything_is_written_to_the_store(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer]
) -> None:
    """The node used to unpack the whole archive into staging and only then check manifest.sig."""
    url, sha = _publish(site, make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES, key=keys[2]))
    writes = await _refused(tmp_path, factory, _cfg(keys[1]), url, sha, "verify", "does not verify with any of the 1")
    assert any(w.startswith("open staging/") for w in writes), writes  # the watch saw the download
    # nothing but the download's own file and the state file's atomic replacement
    allowed = (f"staging/{sha}.tar.gz", "state.json", ".state.json.")
    assert [w for w in writes if not w.split(" ", 1)[1].startswith(allowed)] == []


@pytest.mark.parametrize("change", ["unlisted", "size"])
@_sync
async def test_unlisted_and_mis_sized_files_are_refused_before_they_are_written(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer], change: str
) -> None:
    """A signed manifest, then a file it does not list (the old node unpacked and kept it), or a listed file whose
    header declares another size (the old node wrote it all before comparing)."""
    bundle = make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES, key=keys[0])
    names = [MANIFEST, SIGNATURE, *sorted(p.name for p in bundle.iterdir() if p.name.endswith((".txt", ".onnx")))]
    entries: list[Entry] = [(name, (bundle / name).read_bytes()) for name in names]
    sizes: dict[str, int] = {}
    if change == "unlisted":
        entries.append(("payload.bin", b"\0" * 1000))
    else:
        sizes[names[-1]] = 5 << 20
    archive = write_archive(site[0] / "b2.tar.gz", entries, sizes=sizes)
    url, sha = f"{site[1].url}/b2.tar.gz", sha256_file(archive)
    match = "'payload.bin' is not listed" if change == "unlisted" else f"has {5 << 20} bytes in"
    writes = await _refused(tmp_path, factory, _cfg(keys[1]), url, sha, "verify", match)
    refused = "payload.bin" if change == "unlisted" else names[-1]
    assert not any(w.endswith(refused) for w in writes), writes


@_sync
async def test_stale_partial_downloads_are_removed_before_a_new_download(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer]
) -> None:
    """Each interrupted update used to leave its .part file in staging for good."""
    url, sha = _publish(site, make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES, key=keys[0]))
    async with live_node(tmp_path / "ota", factory, _cfg(keys[1])) as node:
        for stale in ("1" * 64, "2" * 64):
            (node.store.staging / f"{stale}.tar.gz.part").write_bytes(b"\0" * 4096)
        await node.updater.handle(_cmd(url, sha, "2.0.0"))
        assert node.sink.events[-1].ok, node.sink.events[-1]
        assert list(node.store.staging.iterdir()) == []


@_sync
async def test_downgrades_are_refused_but_rollbacks_still_work(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer]
) -> None:
    """Any older signed bundle could be installed again. Now a committed update raises the store's minimum serial;
    an update below it (or without a serial) is refused with what to do, while rollback, and the automatic rollback
    after a failed health check, still go back."""

    def release(version: str, serial: int, **kw: Any) -> UpdateModel:
        bundle = make_tiny_bundle(tmp_path / version, version=version, key=keys[0], serial=serial, **kw)
        return _cmd(*_publish(site, bundle), version)

    kw: dict[str, Any] = {"resolutions": RES}
    v2, v3 = release("2.0.0", 200, **kw), release("3.0.0", 300, **kw)
    old, unnumbered = release("1.5.0", 150, **kw), release("1.6.0", 0, **kw)
    slow = release("4.0.0", 400, resolutions=(224,), broken="slow")
    async with live_node(tmp_path / "ota", factory, _cfg(keys[1], health_frames=4)) as node:
        for cmd in (v2, v3):
            await node.updater.handle(cmd)
            assert node.sink.events[-1].ok, node.sink.events[-1]
        assert node.store.min_serial == 300
        for cmd, has in ((old, "serial 150"), (unnumbered, "no serial (0)")):
            await node.updater.handle(cmd)
            ev = node.sink.events[-1]
            assert not ev.ok and ev.detail is not None and ev.detail["stage"] == "verify", ev
            assert f"has {has}, below 300" in (ev.error or "") and "send 'rollback'" in (ev.error or ""), ev.error
            assert node.serving == "3.0.0"
        await node.updater.handle(v2.model_copy(update={"id": "v2-again"}))  # the previous bundle: a downgrade too
        assert not node.sink.events[-1].ok and "below 300" in (node.sink.events[-1].error or "")

        await node.updater.handle(slow)  # fails its health check: swapped back, minimum unchanged
        assert node.sink.events[-1].detail is not None and node.sink.events[-1].detail["phase"] == "rolled_back"
        assert node.store.min_serial == 300 and node.serving == "3.0.0"
        await node.updater.handle(Rollback(cmd="rollback", id="back"))
        assert node.sink.events[-1].ok and node.serving == "2.0.0"
        await node.predictions_on("2.0.0")
    again = BundleStore(tmp_path / "ota", factory)
    again.startup()
    assert again.min_serial == 300 and again.running.bundle.manifest.version == "2.0.0"


@_sync
async def test_trusted_keys_require_a_signature_even_when_unsigned_models_are_allowed(
    tmp_path: Path, factory: Path, keys: tuple[Path, Path, Path], site: tuple[Path, FaultServer]
) -> None:
    """With EDGE_OTA__ALLOW_UNSIGNED_MODELS and trusted keys both set, deleting manifest.sig bypassed the keys."""
    url, sha = _publish(site, make_tiny_bundle(tmp_path / "b2", version="2.0.0", resolutions=RES))
    cfg = _cfg(keys[1], allow_unsigned_models=True)
    await _refused(tmp_path, factory, cfg, url, sha, "verify", "is not signed")
