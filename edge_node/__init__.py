"""GhostPi edge node: camera → INT8 classifier → MQTT, managed over MQTT."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ghostpi-edge-node")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
