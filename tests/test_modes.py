from __future__ import annotations

from edge_node.config import AutoModeConfig
from edge_node.domain import Mode
from edge_node.vision.modes import ModeController

CFG = AutoModeConfig(low_fps=8, high_fps=15, cooldown=10, window=3)
LADDER = [224, 192, 160]


def feed(ctl: ModeController, fps: float, start: float, seconds: float, step: float = 0.5) -> list[tuple[float, int]]:
    switches = []
    t = start
    while t < start + seconds:
        new = ctl.observe(fps, t)
        if new is not None:
            switches.append((t, new))
        t += step
    return switches


def test_fixed_modes_map_to_resolutions_and_ignore_fps() -> None:
    ctl = ModeController(CFG, LADDER, mode=Mode.HIGH)
    assert ctl.resolution == 224
    assert ctl.set_mode(Mode.PERFORMANCE, 0) == 160
    assert ctl.set_mode(Mode.BALANCED, 0) == 192
    assert feed(ctl, 1.0, 0, 60) == []


def test_fixed_mode_falls_back_to_the_nearest_resolution_a_model_offers() -> None:
    ctl = ModeController(CFG, [256, 128], mode=Mode.BALANCED)
    assert ctl.resolution == 256  # 192 is equally far from both: a tie goes to the larger input
    assert ModeController(CFG, [224, 128], mode=Mode.BALANCED).resolution == 224


def test_auto_steps_down_after_the_window_and_respects_the_cooldown() -> None:
    ctl = ModeController(CFG, LADDER, mode=Mode.AUTO)
    assert ctl.resolution == 224
    switches = feed(ctl, 5.0, 100, 30)
    assert [r for _, r in switches] == [192, 160]
    assert switches[0][0] >= 103  # low for a full window first
    assert switches[1][0] - switches[0][0] >= 10  # cooldown between switches
    assert feed(ctl, 5.0, 130, 30) == []  # nowhere lower to go


def test_auto_steps_up_when_fast_and_holds_inside_the_hysteresis_band() -> None:
    ctl = ModeController(CFG, LADDER, mode=Mode.AUTO)
    feed(ctl, 5.0, 0, 30)
    assert ctl.resolution == 160
    assert feed(ctl, 12.0, 30, 60) == []  # between the watermarks: stable
    switches = feed(ctl, 20.0, 90, 30)
    assert [r for _, r in switches] == [192, 224]


def test_auto_does_not_oscillate_on_noisy_fps() -> None:
    ctl = ModeController(CFG, LADDER, mode=Mode.AUTO)
    t, switches = 0.0, 0
    for i in range(600):  # fps alternating around both watermarks every half second
        if ctl.observe(20.0 if i % 2 else 4.0, t) is not None:
            switches += 1
        t += 0.5
    assert switches == 0  # never below/above a watermark for a full window


def test_new_model_with_other_resolutions_keeps_the_mode() -> None:
    ctl = ModeController(CFG, LADDER, mode=Mode.PERFORMANCE)
    assert ctl.set_ladder([256, 128], now=0) == 128
    assert ctl.mode is Mode.PERFORMANCE
