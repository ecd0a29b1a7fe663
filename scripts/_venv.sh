# Sourced by scripts/demo.sh and scripts/test.sh: make .venv and install the given extras, once.
# Usage: ensure_venv "demo,export"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GHOSTPI_VENV:-$ROOT/.venv}"

die() { printf '\nghostpi: %s\n' "$*" >&2; exit 1; }

find_python() {
  for py in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  return 1
}

ensure_venv() {
  local extras="$1"
  if [ ! -x "$VENV/bin/python" ]; then
    local py
    py="$(find_python)" || die "Python 3.11 or newer is missing. Install it: sudo apt install python3 python3-venv"
    "$py" -c 'import ensurepip, venv' 2>/dev/null \
      || die "Python's venv module is missing. Install it: sudo apt install python3-venv"
    echo "ghostpi: creating $VENV with $("$py" --version)" >&2
    "$py" -m venv "$VENV" || die "could not create $VENV (sudo apt install python3-venv)"
  fi
  # Re-install only when pyproject.toml or the requested extras changed.
  local stamp="$VENV/.ghostpi-$(echo "$extras" | tr ',' '-')"
  local want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "ghostpi: installing edge-node with extras [$extras] into $VENV (first run takes a while)" >&2
    # No `pip install --upgrade pip`: Python 3.11's pip installs this project, and the upgrade cost a minute
    # of a first run (a network round trip and a reinstall).
    local log="$VENV/pip-install.log"
    # --no-compile, then compileall on every core: pip compiles the bytecode of what it installs on one core,
    # which was half of a 4-minute install with the export extra (PyTorch); compiled in parallel it takes 1.
    if ! "$VENV/bin/python" -m pip install --quiet --no-compile -e "$ROOT[$extras]" >"$log" 2>&1; then
      tail -n 30 "$log" >&2
      die "pip could not install edge-node[$extras]; the end of its output is above, all of it in $log (network? disk space?)"
    fi
    # A file compileall cannot compile (a package's test data, say) is skipped, as pip skips it.
    "$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
      >>"$log" 2>&1 || true
    echo "$want" > "$stamp"
  fi
}
