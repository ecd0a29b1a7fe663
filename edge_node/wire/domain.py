"""The node's vocabulary: values shared by settings, the pipeline and the wire messages.

They live here, apart from ``config.py`` (how values are read) and ``messages.py`` (how they travel), so
pure logic can use them without importing either.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Mode", "PublishPolicy"]


class Mode(StrEnum):
    """Resolution modes; ``auto`` lets the node pick by measured speed."""

    HIGH = "high"
    BALANCED = "balanced"
    PERFORMANCE = "performance"
    AUTO = "auto"


class PublishPolicy(StrEnum):
    EVERY = "every"  # every processed frame
    RATE = "rate"  # at most ``max_hz`` messages per second
    CHANGE = "change"  # only when the top-1 label changes
