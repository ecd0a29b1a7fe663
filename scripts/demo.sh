#!/usr/bin/env bash
# Quick start, command 1: run the node on embedded defaults (embedded broker, demo photos, demo model).
# Extra arguments go to `edge-node run` (e.g. --duration 20). The demo model ships prebuilt in the package
# (edge_node/data/demo-bundle), so this installs only the runtime and the embedded broker: no PyTorch.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"

ensure_venv "demo"
exec "$VENV/bin/edge-node" run "$@"
