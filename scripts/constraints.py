#!/usr/bin/env python3
"""Pinned versions per deployment target: deploy/constraints/<target>.txt (docs/deploy.md, "Pinned installs").

    python3 scripts/constraints.py                      refresh every target, keeping pins that still resolve
    python3 scripts/constraints.py --upgrade            move every pin to the newest version that resolves
    python3 scripts/constraints.py --upgrade-package onnxruntime bookworm-aarch64
    python3 scripts/constraints.py --check              download every pinned wheel for its platform (a test)

Resolution is pip's own (``pip install --dry-run --report`` with ``--platform``/``--python-version``, wheels
only), so the pins are exactly what pip on the node accepts: it honours Requires-Python upper bounds and the
platform's manylinux tags. Needs only pip and the package index. Exit codes: 0 ok, 1 failure, 3 the index
could not be reached.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "deploy" / "constraints"
OPTIONAL = OUT / "optional.in"
UNREACHABLE = 3
_NETWORK = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|ConnectTimeoutError|Could not fetch URL|ProxyError"
)


@dataclass(frozen=True)
class Target:
    name: str
    python: str  # the interpreter's major.minor
    arch: str
    glibc: int  # minor version of glibc 2.x: wheels up to manylinux_2_<glibc> install
    numpy: str | None  # apt's numpy, which picamera2 and simplejpeg are built against; None: from PyPI
    about: str

    @property
    def platforms(self) -> list[str]:
        """Every platform tag pip on that system accepts (pip does not expand ``--platform`` by itself)."""
        tags = [f"manylinux_2_{minor}_{self.arch}" for minor in range(self.glibc, 16, -1)]
        return [*tags, f"manylinux2014_{self.arch}"]


TARGETS = {
    t.name: t
    for t in (
        Target("bookworm-aarch64", "3.11", "aarch64", 36, "1.24.2", "Raspberry Pi OS Bookworm 64-bit, Debian 12 arm64"),
        Target("trixie-aarch64", "3.13", "aarch64", 41, "2.2.4", "Raspberry Pi OS Trixie 64-bit, Debian 13 arm64"),
        Target("bookworm-x86_64", "3.11", "x86_64", 36, None, "Debian 12 on a PC (USB or network cameras)"),
    )
}


def requirements() -> list[str]:
    """What the roles install: the package's runtime dependencies, plus the add-ons of optional.in (a node's
    LiteRT runtime, a recorder's PostgreSQL and NATS clients)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = [line.split("#")[0].strip() for line in OPTIONAL.read_text().splitlines()]
    return [*project["dependencies"], *(line for line in optional if line)]


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if match := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line.strip()):
            pins[_norm(match.group(1))] = match.group(2)
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip(target: Target, args: list[str], constraints: list[Path], work: Path) -> subprocess.CompletedProcess[str]:
    reqs = work / "requirements.txt"
    reqs.write_text("\n".join(requirements()) + "\n")
    cmd = [sys.executable, "-m", "pip", *args, "--only-binary=:all:", "--python-version", target.python,
           "--implementation", "cp", "--disable-pip-version-check", "-r", str(reqs)]  # fmt: skip
    for platform in target.platforms:
        cmd += ["--platform", platform]
    for path in constraints:
        cmd += ["-c", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)


def _fail(target: Target, out: subprocess.CompletedProcess[str], what: str) -> int:
    text = out.stdout + out.stderr
    if _NETWORK.search(text):
        print(f"{target.name}: the package index cannot be reached:\n{text[-1500:]}", file=sys.stderr)
        return UNREACHABLE
    lines = [line for line in text.splitlines() if "WARNING: Location" not in line]
    start = next((i for i, line in enumerate(lines) if "conflict is caused by" in line), max(0, len(lines) - 25))
    print(f"{target.name}: {what} failed:\n" + "\n".join(lines[start:]), file=sys.stderr)
    return 1


def _system_numpy(target: Target, work: Path) -> list[Path]:
    if target.numpy is None:
        return []
    path = work / "system-numpy.txt"
    path.write_text(f"numpy=={target.numpy}\n")
    return [path]


def refresh(target: Target, *, upgrade: bool, upgrade_packages: set[str]) -> int:
    path = OUT / f"{target.name}.txt"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        keep = {} if upgrade else {k: v for k, v in read_pins(path).items() if k not in upgrade_packages}
        previous = work / "previous.txt"
        previous.write_text("".join(f"{name}=={version}\n" for name, version in keep.items()))
        report = work / "report.json"
        args = ["install", "--dry-run", "--ignore-installed", "--target", str(work / "t"), "--report", str(report)]
        out = _pip(target, args, [previous, *_system_numpy(target, work)], work)
        if out.returncode != 0:
            code = _fail(target, out, "resolution")
            if code == 1 and keep:
                print("  (a kept pin may be in the way: try --upgrade-package NAME, or --upgrade)", file=sys.stderr)
            return code
        installed = json.loads(report.read_text())["install"]
    pins = sorted((_norm(i["metadata"]["name"]), i["metadata"]["version"]) for i in installed)
    header = [
        f"# GhostPi pinned versions for {target.name}: {target.about}.",
        f"# Python {target.python}, {target.arch}, glibc 2.{target.glibc}, wheels only, as pip resolves them there.",
        "# The edge_node and recorder roles install with 'pip install -c <this file>' on hosts of this target.",
        "# Regenerate with scripts/constraints.py;"
        " tests/deploy/test_constraints.py downloads every pin (docs/deploy.md).",
    ]
    if target.numpy is not None:
        header += [
            f"# numpy is not listed: it comes from apt (python3-numpy {target.numpy}), which picamera2 and",
            "# simplejpeg are built against; these versions were resolved with it, and the role pins the venv to it.",
        ]
    header += [f"# python: {target.python}", f"# platform: {target.arch} manylinux_2_{target.glibc}"]
    if target.numpy is not None:
        header.append(f"# system-numpy: {target.numpy}")
    lines = [f"{name}=={version}" for name, version in pins if not (target.numpy and name == "numpy")]
    path.write_text("\n".join([*header, "", *lines]) + "\n")
    print(f"{path.relative_to(ROOT)}: {len(lines)} pins")
    return 0


def check(target: Target) -> int:
    """Download every wheel the node would install, for its platform, and compare with the pins."""
    path = OUT / f"{target.name}.txt"
    pins = read_pins(path)
    if not pins:
        print(f"{path}: no pins; run scripts/constraints.py", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wheels = work / "wheels"
        out = _pip(target, ["download", "-d", str(wheels)], [path, *_system_numpy(target, work)], work)
        if out.returncode != 0:
            return _fail(target, out, "download")
        got = {}
        for wheel in wheels.iterdir():
            if not wheel.name.endswith(".whl"):
                print(f"{target.name}: {wheel.name} is not a wheel", file=sys.stderr)
                return 1
            name, version = wheel.name.split("-")[:2]
            got[_norm(name)] = version
    expected = dict(pins)
    if target.numpy is not None:
        expected["numpy"] = target.numpy
    if got != expected:
        missing = sorted(set(got) - set(expected))
        print(f"{target.name}: pins and resolution differ; unpinned: {missing}", file=sys.stderr)
        for name in sorted(set(got) | set(expected)):
            if got.get(name) != expected.get(name):
                print(f"  {name}: pinned {expected.get(name)}, resolved {got.get(name)}", file=sys.stderr)
        return 1
    print(f"{target.name}: {len(got)} wheels for Python {target.python} {target.arch} match the pins")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], metavar="TARGET", help=", ".join(TARGETS))
    parser.add_argument("--upgrade", action="store_true", help="ignore the current pins")
    parser.add_argument("--upgrade-package", action="append", default=[], metavar="NAME", help="unpin NAME first")
    parser.add_argument("--check", action="store_true", help="download and compare instead of refreshing")
    args = parser.parse_args()
    worst = 0
    for name in args.targets or TARGETS:
        target = TARGETS[name]
        if args.check:
            code = check(target)
        else:
            code = refresh(target, upgrade=args.upgrade, upgrade_packages={_norm(p) for p in args.upgrade_package})
        worst = max(worst, code)
    return worst


if __name__ == "__main__":
    sys.exit(main())
