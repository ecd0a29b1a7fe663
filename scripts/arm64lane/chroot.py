"""The emulated Raspberry Pi OS root: build it once (mmdebstrap), mount what it needs, run commands in it.

A Debian Bookworm arm64 root (what Raspberry Pi OS Bookworm 64-bit is built on) run through qemu-user and
binfmt_misc, cached outside the clone. ``QEMU_CPU`` picks the emulated core: ``cortex-a72`` (Pi 4, no
dot-product instructions) or ``cortex-a76`` (Pi 5, with them); the INT8 kernels of both runtimes choose their
code paths by those CPU features (HWCAP), which qemu reports per model, so answers are those of that core.
Timing is not: a frame takes seconds under emulation, tens of milliseconds on a board.

Only /proc and /dev are mounted into the root: with the host's /sys bound in, ONNX Runtime and LiteRT read the
host's CPU list through cpuinfo and crash at start. Without any /sys, cpuinfo fails to start: ONNX Runtime
then reads the CPU features from the auxiliary vector itself, but LiteRT silently runs without XNNPACK (the
kernels a Pi uses). So the lane writes the two files cpuinfo needs, ``/sys/devices/system/cpu/possible`` and
``present``, as plain files in the root; the CPU features still come from the emulated core's HWCAP.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CPUS",
    "HWCAP_ASIMDDP",
    "INCLUDE",
    "Root",
    "cache_root",
    "dotprod",
    "mmdebstrap_argv",
]

# The emulated cores and what they stand for.
CPUS = {"cortex-a72": "Raspberry Pi 4 (Cortex-A72, no dot-product)", "cortex-a76": "Raspberry Pi 5 (Cortex-A76)"}
# What Raspberry Pi OS Lite brings that the node needs: Python with venv and pip, apt's numpy (picamera2 is built
# against it), OpenCV's shared libraries, CA certificates for pip.
INCLUDE = ("python3", "python3-venv", "python3-pip", "python3-numpy", "libgl1", "libglib2.0-0", "ca-certificates")
HWCAP_ASIMDDP = 1 << 20  # AT_HWCAP bit of the SDOT/UDOT instructions (Linux arch/arm64 uapi hwcap.h)
_AT_HWCAP = 16
_ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cache_root() -> Path:
    """Where the root and the lane's results live: outside any clone, shared by every checkout."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ghostpi" / "arm64"


def mmdebstrap_argv(target: Path, *, suite: str = "bookworm", mirror: str | None = None) -> list[str]:
    """The command that builds the root (about 4 minutes and 530 MB here)."""
    argv = ["mmdebstrap", "--arch=arm64", "--variant=apt", f"--include={','.join(INCLUDE)}", suite, str(target)]
    return [*argv, mirror] if mirror else argv


def dotprod(auxv: bytes) -> bool:
    """Whether an ``/proc/self/auxv`` image (64-bit little-endian pairs) announces the dot-product instructions."""
    for i in range(0, len(auxv) - 15, 16):
        key = int.from_bytes(auxv[i : i + 8], "little")
        if key == _AT_HWCAP:
            return bool(int.from_bytes(auxv[i + 8 : i + 16], "little") & HWCAP_ASIMDDP)
        if key == 0:
            break
    return False


@dataclass(frozen=True)
class Root:
    path: Path

    @property
    def ready(self) -> bool:
        return (self.path / "usr" / "bin" / "python3").exists() and (self.path / ".ghostpi-root").exists()

    def build(self, log: Path) -> None:
        """Build the root with mmdebstrap into a temporary folder, then move it in place (a cut run leaves no
        half root behind)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as fh:
            subprocess.run(mmdebstrap_argv(tmp), check=True, stdout=fh, stderr=subprocess.STDOUT, timeout=3600)
        (tmp / ".ghostpi-root").write_text("built by scripts/arm64.sh\n")
        shutil.rmtree(self.path, ignore_errors=True)
        tmp.rename(self.path)

    def install_ca_certificates(self) -> None:
        """The host's CA bundle, so pip inside can reach the package index over TLS."""
        dest = self.path / "etc" / "ssl" / "certs" / "ca-certificates.crt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile("/etc/ssl/certs/ca-certificates.crt", dest)

    @contextlib.contextmanager
    def mounted(self, binds: Mapping[Path, str] = {}) -> Iterator[None]:
        """/proc and /dev (never /sys), plus read-only ``binds`` (host folder -> path in the root), for the block."""
        done: list[Path] = []
        try:
            self._mount(["-t", "proc", "proc"], self.path / "proc", done)
            self._mount(["--bind", "/dev"], self.path / "dev", done)
            self.write_cpu_lists()
            for host, inside in binds.items():
                target = self.path / inside.lstrip("/")
                target.mkdir(parents=True, exist_ok=True)
                self._mount(["--bind", str(host)], target, done)
                subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True, timeout=30)
            yield
        finally:
            for target in reversed(done):
                subprocess.run(["umount", "-l", str(target)], check=False, timeout=30)

    def write_cpu_lists(self) -> None:
        """What cpuinfo reads to count the cores (``0-N``), so LiteRT can start XNNPACK in the root."""
        cpus = self.path / "sys" / "devices" / "system" / "cpu"
        cpus.mkdir(parents=True, exist_ok=True)
        last = max(0, (os.cpu_count() or 1) - 1)
        for name in ("possible", "present"):
            (cpus / name).write_text(f"0-{last}\n" if last else "0\n")

    @staticmethod
    def _mount(args: Sequence[str], target: Path, done: list[Path]) -> None:
        if os.path.ismount(target):
            return
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *args, str(target)], check=True, timeout=30)
        done.append(target)

    def argv(self, command: Sequence[str], *, cpu: str | None = None, env: Mapping[str, str] = {}) -> list[str]:
        """``command`` run in the root with a clean environment, on the emulated core ``cpu``."""
        settings = {"PATH": _ENV_PATH, "HOME": "/root", "LANG": "C.UTF-8", **env}
        if cpu:
            settings["QEMU_CPU"] = cpu
        return ["chroot", str(self.path), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in settings.items()), *command]

    def run(
        self,
        command: Sequence[str],
        *,
        cpu: str | None = None,
        env: Mapping[str, str] = {},
        timeout: float = 3600,
        log: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the root; its output goes to ``log`` (appended) or is returned."""
        argv = self.argv(command, cpu=cpu, env=env)
        if log is None:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        with log.open("a") as fh:
            return subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)

    def has_dotprod(self, cpu: str) -> bool:
        """Ask the emulated core itself (its auxiliary vector) whether it has the dot-product instructions."""
        dump = "import sys; sys.stdout.buffer.write(open('/proc/self/auxv', 'rb').read())"
        out = subprocess.run(
            self.argv(["/usr/bin/python3", "-c", dump], cpu=cpu), capture_output=True, timeout=120, check=True
        )
        return dotprod(out.stdout)
