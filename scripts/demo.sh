#!/usr/bin/env bash
# Quick start, command 1: run the node on embedded defaults (embedded broker, demo photos, demo model).
# Extra arguments go to `edge-node run` (e.g. --duration 20).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"

ensure_venv "demo"
if [ -z "${EDGE_MODEL__BUNDLE:-}" ] && ! "$VENV/bin/python" -c \
    'import sys; from edge_node.modelzoo.demo import demo_bundle_path; sys.exit(not (demo_bundle_path() / "manifest.json").is_file())'
then
  echo "ghostpi: the demo model is not built yet: installing the model toolchain (PyTorch, timm) to build it once" >&2
  ensure_venv "demo,export"
fi
exec "$VENV/bin/edge-node" run "$@"
