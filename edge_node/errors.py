"""One exception tree for the whole node.

Library errors are translated at the boundary (``raise EdgeError(...) from exc``); every message says
what the user can do about it.
"""

from __future__ import annotations

__all__ = [
    "AccuracyError",
    "BundleError",
    "BundleIntegrityError",
    "CameraError",
    "CommandError",
    "ConfigError",
    "DatasetError",
    "DownloadError",
    "EdgeError",
    "InferenceError",
    "MissingExtraError",
    "MqttError",
    "NotifyError",
    "SignatureError",
    "SnapshotError",
    "UpdateError",
]


class EdgeError(Exception):
    """Base class of every error the node raises on purpose."""


class ConfigError(EdgeError):
    """Settings are missing or invalid."""


class MissingExtraError(EdgeError):
    """An optional dependency group is not installed."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the '{extra}' extra. Install it with: pip install 'ghostpi-edge-node[{extra}]'")
        self.extra = extra


class CameraError(EdgeError):
    """The frame source cannot be opened or stopped delivering frames."""


class BundleError(EdgeError):
    """A model bundle is malformed, incomplete or unusable."""


class BundleIntegrityError(BundleError):
    """A bundle file does not match the hash or size in its manifest."""


class SignatureError(BundleError):
    """A bundle signature is missing, malformed or made by an untrusted key."""


class DatasetError(EdgeError):
    """A folder of labelled images cannot be used for training or evaluation."""


class InferenceError(EdgeError):
    """A runtime could not load or run a model."""


class AccuracyError(InferenceError):
    """No file of a bundle agrees well enough with its FP32 answers on this device (its reference check)."""


class MqttError(EdgeError):
    """The broker cannot be reached or refused us."""


class CommandError(EdgeError):
    """A control message is invalid; the text goes back to the operator in an error event."""


class DownloadError(EdgeError):
    """A model or checkpoint download failed."""


class UpdateError(EdgeError):
    """An over-the-air model update failed; the node keeps its current model."""


class SnapshotError(EdgeError):
    """A snapshot could not be taken or encoded within its size limit."""


class NotifyError(EdgeError):
    """A detection notification could not be delivered (``edge-node notify``: the command, the webhook)."""
