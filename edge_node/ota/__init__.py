"""Over-the-air model updates: the bundle store the node starts from, and the updater that changes it.

What other packages use is here: :class:`BundleStore` (active, previous and factory bundles, crash-safe) and
:class:`Updater` with its :class:`OtaSink`. The toolchain also uses :func:`download` (resumable, checked) and
the bundle server, :mod:`edge_node.ota.serve`.
"""

from __future__ import annotations

from edge_node.ota.download import download
from edge_node.ota.store import BundleStore
from edge_node.ota.updater import OtaSink, Updater

__all__ = ["BundleStore", "OtaSink", "Updater", "download"]
