"""The prediction publish policy: every frame, at most N Hz, or on a change of label. Pure logic."""

from __future__ import annotations

from edge_node.wire import PublishPolicy

__all__ = ["PublishGate"]


class PublishGate:
    """Decides per result whether it is published; ``now`` is a monotonic time in seconds."""

    def __init__(self, policy: PublishPolicy, max_hz: float) -> None:
        self.policy = policy
        self.max_hz = max_hz
        self._last_at = float("-inf")
        self._last_label: str | None = None

    def configure(self, policy: PublishPolicy, max_hz: float | None = None) -> None:
        self.policy = policy
        if max_hz is not None:
            self.max_hz = max_hz
        self._last_label = None  # the next result is published, so a subscriber sees the new policy at once

    def allow(self, label: str, now: float) -> bool:
        if self.policy is PublishPolicy.EVERY:
            ok = True
        elif self.policy is PublishPolicy.RATE:
            ok = now - self._last_at >= 1.0 / self.max_hz
        else:
            ok = label != self._last_label
        if ok:
            self._last_at = now
            self._last_label = label
        return ok
