"""The arm64 lane behind ``scripts/arm64.sh``: the node on an emulated Raspberry Pi OS root (docs/deploy.md)."""
