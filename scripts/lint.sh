#!/usr/bin/env bash
# Lint and type-check (scripts/test.sh runs it before the tests): ruff, ruff's formatter, then mypy (strict, over
# edge_node, tests, bench and scripts: pyproject.toml). The first finding stops it with a non-zero status.
# Uses the ruff and mypy on PATH; scripts/test.sh puts the project's venv first.
#
# One command per line on purpose: under `set -e`, bash does not stop when a command that is not the last of
# an `a && b` list fails, so `ruff check . && ruff format --check .` let findings pass (issue 16, item 7).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== ruff check" >&2
ruff check .
echo "== ruff format --check" >&2
ruff format --check .
echo "== mypy" >&2
mypy
