"""Resolution modes and the auto controller: pure logic, no clocks of its own (time is passed in)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_node.config import AutoModeConfig
from edge_node.wire import Mode

__all__ = ["MODE_RESOLUTION", "ModeController"]

MODE_RESOLUTION: dict[Mode, int] = {Mode.HIGH: 224, Mode.BALANCED: 192, Mode.PERFORMANCE: 160}
SMOOTHING = 0.1  # weight of each new inference time in a resolution's running average


@dataclass
class ModeController:
    """Holds the current mode and resolution; in ``auto`` it walks the resolution ladder.

    It steps **down** (a smaller input) once the measured FPS has stayed below ``low_fps`` for ``window`` s. It
    steps **up** only once the next larger input is *predicted* to run above ``high_fps`` for ``window`` s: from
    the inference time measured now at the current resolution, scaled by how much costlier the larger one is
    (measured when the two last ran one after the other, or, until then, by their pixel count, which
    overestimates), times the workers that share the load. Measured FPS cannot tell headroom from a camera
    that is the limit (at 160 px a busy node may still reach the camera's 30 fps), which is what made the
    old controller step up into a resolution that could not keep up and fall back again. No two switches
    within ``cooldown`` s.
    """

    cfg: AutoModeConfig
    ladder: list[int]  # available resolutions, largest first
    mode: Mode = Mode.HIGH
    resolution: int = 0
    workers: int = 1
    _last_switch: float = float("-inf")
    _below_since: float | None = None
    _above_since: float | None = None
    _ms: dict[int, float] = field(default_factory=dict)  # smoothed inference ms per resolution
    _ratio: dict[tuple[int, int], float] = field(default_factory=dict)  # (larger, smaller) -> cost ratio
    _switched_from: tuple[int, float] | None = None  # (resolution, its ms) just before the last auto switch

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
        self._switched_from = None
        if mode is Mode.AUTO:
            if self.resolution not in self.ladder:
                self.resolution = self.ladder[0]
        else:
            self.resolution = self._closest(MODE_RESOLUTION[mode])
        self._last_switch = now
        return self.resolution

    def set_ladder(self, ladder: list[int], now: float) -> int:
        """A new model may offer other resolutions, and costs differ: keep the mode, re-pick the resolution."""
        self.ladder = sorted(ladder, reverse=True)
        self._ms.clear()
        self._ratio.clear()
        self._switched_from = None
        if self.mode is Mode.AUTO:
            self.resolution = self._closest(self.resolution)
            return self.resolution
        return self.set_mode(self.mode, now)

    def predicted_fps(self, resolution: int) -> float | None:
        """What the workers would sustain at ``resolution``, judged from the current resolution's cost now."""
        current = self._ms.get(self.resolution)
        if current is None or current <= 0:
            return None
        ms = current * self._cost_ratio(resolution, self.resolution)
        return self.workers * 1000.0 / ms

    def _cost_ratio(self, a: int, b: int) -> float:
        if a == b:
            return 1.0
        big, small = max(a, b), min(a, b)
        ratio = self._ratio.get((big, small), (big / small) ** 2)
        return ratio if a > b else 1.0 / ratio

    def observe(self, now: float, *, fps: float, resolution: int, inference_ms: float) -> int | None:
        """Feed one classified frame's figures (``resolution`` is the size it ran at, which lags a switch while
        the new session is built); returns the new resolution when auto mode switches, else None."""
        if inference_ms > 0:
            old = self._ms.get(resolution)
            self._ms[resolution] = inference_ms if old is None else old + SMOOTHING * (inference_ms - old)
        if self.mode is not Mode.AUTO:
            return None
        self._learn_ratio(now, resolution)
        i = self.ladder.index(self.resolution)
        up = self.ladder[i - 1] if i > 0 else None
        predicted = self.predicted_fps(up) if up is not None and resolution == self.resolution else None
        self._below_since = (self._below_since or now) if fps < self.cfg.low_fps else None
        fits = predicted is not None and predicted > self.cfg.high_fps and fps >= self.cfg.low_fps
        self._above_since = (self._above_since or now) if fits else None
        if now - self._last_switch < self.cfg.cooldown:
            return None
        if self._below_since is not None and now - self._below_since >= self.cfg.window and i + 1 < len(self.ladder):
            return self._switch(self.ladder[i + 1], now)
        if self._above_since is not None and up is not None and now - self._above_since >= self.cfg.window:
            return self._switch(up, now)
        return None

    def _switch(self, target: int, now: float) -> int:
        self._switched_from = (self.resolution, self._ms.get(self.resolution, 0.0))
        self.resolution = target
        self._last_switch = now
        self._below_since = self._above_since = None
        return target

    def _learn_ratio(self, now: float, resolution: int) -> None:
        """Once the new resolution has run for a window, compare its cost with the one just before the switch:
        two measurements under (nearly) the same load."""
        if self._switched_from is None or resolution != self.resolution:
            return
        if now - self._last_switch < self.cfg.window:
            return
        before, before_ms = self._switched_from
        after_ms = self._ms.get(resolution)
        self._switched_from = None
        if before_ms <= 0 or not after_ms:
            return
        big, small = max(before, resolution), min(before, resolution)
        ratio = after_ms / before_ms if resolution == big else before_ms / after_ms
        self._ratio[(big, small)] = max(1.0, ratio)
