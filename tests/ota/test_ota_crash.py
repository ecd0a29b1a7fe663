"""Activation survives a cut at any point: a real update (tests/support/ota_update_once.py: the real Updater and
BundleStore on a live pipeline with ONNX Runtime, fed by a loopback HTTP server) in a process of its own.

What each test really exercises:

- ``test_each_rename_publishes_only_what_is_already_on_disk`` is the power-cut argument. A power cut loses
  what the kernel had not yet written, so a rename may only publish files and folders that were fsynced
  before it, and must itself be made durable (an fsync of the folder it changed) before the next step relies
  on it. The test records the update's fsync and rename system calls with strace and checks that order. It
  checks what the program asks of the kernel, not the disk: a filesystem or disk that ignores fsync (or
  ``nobarrier``) can still lose data, and no power was actually cut.
- ``test_a_kill_at_every_step_leaves_the_old_or_the_new_bundle`` kills the process (SIGKILL, like ``kill -9``
  or the OOM killer) just before each of the update's changes to the file system in turn, restarts the store
  and checks that it starts on the old bundle or, once the commit is through, on the new one, with every file
  of it intact, nothing half-done left behind, and that a next update still succeeds. The page cache survives
  a killed process, so this shows the order of the steps is safe, not that they reach the disk (the first test).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_node.bundle.archive import pack
from edge_node.ota.download import sha256_file
from edge_node.ota.store import BundleStore
from tests.support.bundles import make_key, make_tiny_bundle
from tests.support.ota_http import serving
from tests.support.paths import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RES = (64, 48)


@dataclass(frozen=True)
class World:
    """A factory bundle 1.0.0, a signed 2.0.0 on a loopback server, and state folders to update."""

    root: Path
    factory: Path
    pubkey: Path
    url: str
    sha256: str

    def fresh_state(self, name: str) -> Path:
        """An empty node state folder whose store folders exist, so that the steps seen are the update's own."""
        state = self.root / name
        shutil.rmtree(state, ignore_errors=True)
        BundleStore(state, self.factory)
        return state

    def run(
        self, state: Path, ident: str, *extra: str, prefix: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """Update ``state`` to 2.0.0 in a process of its own (tests/support/ota_update_once.py), command ``ident``."""
        args = [str(state), str(self.factory), str(self.pubkey), self.url, self.sha256, "2.0.0", ident, *extra]
        env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
        command = [*prefix, sys.executable, "-m", "tests.support.ota_update_once", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("crash")
    key = root / "release.pem"
    pub = make_key(key)
    factory = make_tiny_bundle(root / "factory", version="1.0.0", resolutions=RES, key=key)
    site = root / "site"
    site.mkdir()
    archive = pack(
        make_tiny_bundle(root / "b2", version="2.0.0", resolutions=RES, key=key, serial=2), site / "b2.tar.gz"
    )
    with serving(site) as srv:
        yield World(root, factory, pub, f"{srv.url}/b2.tar.gz", sha256_file(archive))


# --- the order of fsync and rename (power cuts) ---------------------------------------------------------------

_DONE = re.compile(r"^\d+ +(fsync|fdatasync|rename|renameat|renameat2)\((.*)\) += (-?\d+)")
_STARTED = re.compile(r"^\d+ +(fsync|fdatasync|rename|renameat|renameat2)\((.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^\d+ +<\.\.\. (fsync|fdatasync|rename|renameat|renameat2) resumed>.*\) += (-?\d+)")
_FD_PATH = re.compile(r"^\d+<(.*)>$")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Call:
    name: str  # "fsync" or "rename"
    paths: tuple[Path, ...]  # the file or folder fsynced; (source, target) of a rename


def _calls(trace: str, cwd: Path) -> list[Call]:
    """fsync/rename calls in the order they completed (strace -f -y), failed ones left out. A call that another
    thread interrupted in the trace (``<unfinished ...>``) is placed where it completed."""
    calls: list[Call] = []
    started: dict[str, str] = {}  # the pid's unfinished call's arguments
    for line in trace.splitlines():
        pid = line.split(" ", 1)[0]
        if match := _DONE.match(line):
            name, args, result = match.groups()
        elif match := _STARTED.match(line):
            started[pid] = match.group(2)
            continue
        elif match := _RESUMED.match(line):
            name, result = match.groups()
            args = started.pop(pid)
        else:
            continue
        if int(result) < 0:
            continue
        if name.startswith("rename"):
            source, target = (cwd / s for s in _STRING.findall(args)[:2])
            calls.append(Call("rename", (source, target)))
        elif fd := _FD_PATH.match(args.strip()):
            calls.append(Call("fsync", (Path(fd.group(1)),)))
    return calls


def _order_problems(calls: list[Call]) -> list[str]:
    """What a power cut right after some rename could lose, by the rules in the module docstring."""
    problems = []
    renames = [i for i, c in enumerate(calls) if c.name == "rename"]
    for n, i in enumerate(renames):
        source, target = calls[i].paths
        synced_before = {c.paths[0] for c in calls[:i] if c.name == "fsync"}
        if target.is_dir():  # a folder: each of its files and folders, then the folder itself
            published = [source / p.relative_to(target) for p in target.rglob("*")] + [source]
        else:
            published = [source]
        problems += [
            f"{p} was not fsynced before it was renamed into place" for p in published if p not in synced_before
        ]
        until = renames[n + 1] if n + 1 < len(renames) else len(calls)
        synced_after = {c.paths[0] for c in calls[i + 1 : until] if c.name == "fsync"}
        if target.parent not in synced_after:
            problems.append(f"{target.parent} was not fsynced after {source.name} was renamed to {target.name}")
    return problems


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (apt-get install strace)")
def test_each_rename_publishes_only_what_is_already_on_disk(world: World) -> None:
    """The extracted bundle's files and folder used to reach bundles/ without an fsync: a power cut after the
    commit could leave state.json naming a bundle whose files were empty."""
    state = world.fresh_state("traced")
    trace = world.root / "trace.txt"
    strace = ("strace", "-f", "-qq", "-y", "-e", "signal=none", "-o", str(trace))
    syscalls = ("-e", "trace=fsync,fdatasync,rename,renameat,renameat2")
    done = world.run(state, "trace", prefix=(*strace, *syscalls))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    calls = [c for c in _calls(trace.read_text(), REPO) if state in (c.paths[0], *c.paths[0].parents)]
    renamed = [c.paths[1].relative_to(state).as_posix() for c in calls if c.name == "rename"]
    # the update's publishing steps, in order: state (pending), download, install, state (commit, done, id)
    assert renamed[0] == "state.json" and renamed[1].startswith("staging/") and renamed[1].endswith(".tar.gz")
    assert renamed[2].startswith("bundles/2.0.0-") and renamed[3:] == ["state.json"] * 3, renamed
    assert _order_problems(calls) == []


# --- kill -9 at each step -------------------------------------------------------------------------------------


def _steps(world: World) -> list[str]:
    """The update's changes to the file system, in order (one uninterrupted run)."""
    log = world.root / "steps.txt"
    done = world.run(world.fresh_state("counted"), "count", "--steps", str(log))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return log.read_text().splitlines()


def _assert_consistent(world: World, state: Path, committed: bool, step: str) -> None:
    """A restart comes up on the old bundle (or the new one once the commit is through), every file of it intact,
    with nothing half-done left: no pending update, no extraction folder, at most one partial download."""
    store = BundleStore(state, world.factory)
    bundle, source = store.startup()
    where = f"killed before {step}"
    assert store.startup_errors == [], (where, store.startup_errors)
    assert bundle.manifest.version == ("2.0.0" if committed else "1.0.0"), (where, source)
    path = state / "state.json"
    saved = json.loads(path.read_text()) if path.exists() else {"active": None, "previous": None, "pending": None}
    assert saved["pending"] is None, where
    assert {p.name for p in store.bundles.iterdir()} <= {saved["active"], saved["previous"]}, where
    leftovers = [p.name for p in store.staging.iterdir()]
    assert all(n.endswith(".part") for n in leftovers) and len(leftovers) <= 1, (where, leftovers)


def _kill_and_restart(world: World, number: int, step: str, committed: bool) -> None:
    state = world.fresh_state(f"kill{number}")
    killed = world.run(state, f"kill{number}", "--kill-before", str(number))
    assert killed.returncode == -9, (step, killed.returncode, killed.stderr[-2000:])
    _assert_consistent(world, state, committed, step)
    if step.split()[1] == "os.rename":  # after a kill at a publishing step, the next update still works
        again = world.run(state, f"again{number}")
        assert again.returncode == 0 and json.loads(again.stdout)["ok"], (step, again.stdout, again.stderr[-2000:])
        _assert_consistent(world, state, True, f"{step}, then updated again")


def test_a_kill_at_every_step_leaves_the_old_or_the_new_bundle(world: World) -> None:
    steps = _steps(world)
    renames = [(i, s.split()[2]) for i, s in enumerate(steps, 1) if s.split()[1] == "os.rename"]
    install = next(i for i, path in renames if path.startswith("staging/unpack-"))
    commit = next(i for i, _ in renames if i > install)
    assert len(steps) >= 15 and steps[commit - 1].endswith(".tmp"), steps  # the commit replaces state.json
    # Three processes at a time: each mostly waits (camera frames, the health check), so the machine is not the limit.
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = [pool.submit(_kill_and_restart, world, n, step, n > commit) for n, step in enumerate(steps, 1)]
        for run in runs:
            run.result()
