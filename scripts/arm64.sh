#!/usr/bin/env bash
# The arm64 lane: the node on an emulated Raspberry Pi OS (Bookworm arm64) root, checked and measured under
# QEMU_CPU=cortex-a72 (Pi 4) and cortex-a76 (Pi 5). docs/deploy.md, "The Pi path without a Pi".
#
#   sudo scripts/arm64.sh                         every step, every CPU (over an hour on 2 cores)
#   sudo scripts/arm64.sh --steps node,bench      one step at a time; see --help
#
# Needs root (chroot, mounts), qemu-user-static, binfmt-support, mmdebstrap and mosquitto from apt, and a venv
# with the project, Ansible and the model toolchain (the dev and export extras; GHOSTPI_VENV, default .venv).
# The root and the results live in ${XDG_CACHE_HOME:-~/.cache}/ghostpi/arm64, outside the clone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GHOSTPI_VENV:-$ROOT/.venv}"

die() { printf '\narm64 lane: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root for chroot and mounts: sudo $0 $*"
for tool in qemu-aarch64-static qemu-x86_64-static mmdebstrap update-binfmts mosquitto; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] \
    || die "$tool is missing: apt-get install qemu-user-static binfmt-support mmdebstrap mosquitto"
done
[ -x "$VENV/bin/python" ] || die "no venv at $VENV: scripts/test.sh makes one (or set GHOSTPI_VENV)"
[ -x "$VENV/bin/ansible-playbook" ] || die "Ansible is missing in $VENV: pip install 'ghostpi-edge-node[dev]'"

# aarch64 binaries run through qemu by binfmt_misc; F (fix binary) lets them run inside the chroot.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc (a container without it?)"
fi
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
  || die "binfmt for aarch64 is not enabled: apt-get install qemu-user-static binfmt-support"

cd "$ROOT"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$VENV/bin/python" -m scripts.arm64lane.lane "$@"
