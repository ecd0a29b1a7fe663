"""Resolution modes and the auto controller: pure logic, no clocks of its own (time is passed in)."""

from __future__ import annotations

from dataclasses import dataclass

from edge_node.config import AutoModeConfig
from edge_node.domain import Mode

__all__ = ["MODE_RESOLUTION", "ModeController"]

MODE_RESOLUTION: dict[Mode, int] = {Mode.HIGH: 224, Mode.BALANCED: 192, Mode.PERFORMANCE: 160}


@dataclass
class ModeController:
    """Holds the current mode and resolution; in ``auto`` it walks the resolution ladder by FPS.

    It steps down (smaller input) once FPS has stayed below ``low_fps`` for ``window`` seconds, up once
    it has stayed above ``high_fps``, and never switches twice within ``cooldown`` seconds. The gap between
    the two watermarks is the hysteresis; the window and cooldown stop oscillation.
    """

    cfg: AutoModeConfig
    ladder: list[int]  # available resolutions, largest first
    mode: Mode = Mode.HIGH
    resolution: int = 0
    _last_switch: float = float("-inf")
    _below_since: float | None = None
    _above_since: float | None = None

    def __post_init__(self) -> None:
        if not self.ladder:
            raise ValueError("the model offers no resolutions")
        self.ladder = sorted(self.ladder, reverse=True)
        self.set_mode(self.mode, now=float("-inf"))

    def _closest(self, resolution: int) -> int:
        return min(self.ladder, key=lambda r: (abs(r - resolution), -r))

    def set_mode(self, mode: Mode, now: float) -> int:
        """Apply an operator's mode; returns the resolution now in force."""
        self.mode = mode
        self._below_since = self._above_since = None
        if mode is Mode.AUTO:
            if self.resolution not in self.ladder:
                self.resolution = self.ladder[0]
        else:
            self.resolution = self._closest(MODE_RESOLUTION[mode])
        self._last_switch = now
        return self.resolution

    def set_ladder(self, ladder: list[int], now: float) -> int:
        """A new model may offer other resolutions; keep the mode, re-pick the resolution."""
        self.ladder = sorted(ladder, reverse=True)
        if self.mode is Mode.AUTO:
            self.resolution = self._closest(self.resolution)
            return self.resolution
        return self.set_mode(self.mode, now)

    def observe(self, fps: float, now: float) -> int | None:
        """Feed the measured FPS; returns the new resolution when auto mode switches, else None."""
        if self.mode is not Mode.AUTO:
            return None
        if fps < self.cfg.low_fps:
            self._above_since = None
            self._below_since = now if self._below_since is None else self._below_since
        elif fps > self.cfg.high_fps:
            self._below_since = None
            self._above_since = now if self._above_since is None else self._above_since
        else:
            self._below_since = self._above_since = None
            return None
        if now - self._last_switch < self.cfg.cooldown:
            return None
        i = self.ladder.index(self.resolution)
        if self._below_since is not None and now - self._below_since >= self.cfg.window and i + 1 < len(self.ladder):
            target = self.ladder[i + 1]
        elif self._above_since is not None and now - self._above_since >= self.cfg.window and i > 0:
            target = self.ladder[i - 1]
        else:
            return None
        self.resolution = target
        self._last_switch = now
        self._below_since = self._above_since = None
        return target
