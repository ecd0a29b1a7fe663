#!/usr/bin/env bash
# Quick start, command 2: lint, type-check and run the whole test suite. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"

command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] \
  || die "the tests need the mosquitto broker binary. Install it: sudo apt install mosquitto"
ensure_venv "dev,demo,export,dashboard,record"
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
bash "$ROOT/scripts/lint.sh"  # stops here on any finding (set -e)
echo "== pytest" >&2
# Two workers, a test file each at a time (module fixtures stay in one process): half the suite waits on brokers,
# nodes and subprocesses, so two halve its time on 2 cores. `scripts/test.sh -n 0 ...` runs in one process.
exec python -m pytest -q -ra -n 2 --dist loadfile --durations=25 "$@"
