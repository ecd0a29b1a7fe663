"""``EDGE_CAMERA__SOURCE`` → a FrameSource."""

from __future__ import annotations

from pathlib import Path

from edge_node.capture.base import DEFAULT_FPS, FrameSource
from edge_node.capture.opencv import OpenCVSource
from edge_node.capture.picamera import Picamera2Source
from edge_node.capture.stills import StillsSource, demo_photos, folder_source
from edge_node.capture.synthetic import SyntheticSource
from edge_node.config import CameraConfig
from edge_node.errors import ConfigError

__all__ = ["make_source"]

DEMO_HOLD_S = 2.0  # each demo photo stays in front of the "camera" this long


def _options(spec: str) -> dict[str, int]:
    """``synthetic:stall_after=100,on_demand`` → {"stall_after": 100, "on_demand": 1}."""
    opts: dict[str, int] = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key == "stall_after" and value.isdigit():
            opts[key] = int(value)
        elif key == "on_demand" and not value:
            opts[key] = 1
        else:
            raise ConfigError(f"unknown synthetic option {item!r}; options are stall_after=<frames> and on_demand")
    return opts


def make_source(cfg: CameraConfig) -> FrameSource:
    src = cfg.source
    fps = cfg.fps or DEFAULT_FPS  # for sources without a rate of their own
    if src == "demo":
        return StillsSource("demo", demo_photos, fps, DEMO_HOLD_S)
    if src == "synthetic" or src.startswith("synthetic:"):
        opts = _options(src.partition(":")[2])
        return SyntheticSource(
            cfg.width, cfg.height, fps, stall_after=opts.get("stall_after"), on_demand=bool(opts.get("on_demand"))
        )
    if src == "picamera2":
        return Picamera2Source(cfg.width, cfg.height, fps)
    if src.startswith("dir:"):
        return folder_source(Path(src[4:]).expanduser(), fps)
    if src.isdigit():
        return OpenCVSource(int(src), cfg.width, cfg.height, cfg.fps)
    if "://" in src:
        return OpenCVSource(src, cfg.width, cfg.height, cfg.fps)
    path = Path(src).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"EDGE_CAMERA__SOURCE={src!r} is neither a known source (demo, synthetic, picamera2, dir:<path>, "
            "a device index, an rtsp:// URL) nor an existing video file"
        )
    return OpenCVSource(str(path), cfg.width, cfg.height, cfg.fps)
