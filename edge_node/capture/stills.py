"""Still-image sources: a folder of images that loops, and the bundled demo photos."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast

import cv2

from edge_node.capture.base import Frame, Pacer
from edge_node.errors import CameraError

__all__ = ["DEMO_FILES", "DEMO_PHOTOS", "StillsSource", "demo_photos", "folder_source"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# Real photos from scikit-image's data (CC0 or public domain: edge_node/data/demo-photos/SOURCES.md), shipped
# in the package as JPEGs so that the demo needs neither scikit-image nor a download.
DEMO_PHOTOS = Path(__file__).resolve().parents[1] / "data" / "demo-photos"
DEMO_FILES = {
    "chelsea": "chelsea.jpg",
    "coffee": "coffee.jpg",
    "rocket": "rocket.jpg",
    "astronaut": "astronaut.jpg",
}


class StillsSource:
    """Plays a list of images in a loop, holding each for ``hold`` seconds at the camera's ``fps``."""

    def __init__(self, name: str, loader: Callable[[], list[tuple[str, Frame]]], fps: float, hold: float) -> None:
        self.name = name
        self._loader = loader
        self._pacer = Pacer(fps)
        self._per_image = max(1, round(hold * fps))
        self._images: list[tuple[str, Frame]] = []
        self._count = 0

    def open(self) -> None:
        self._images = self._loader()
        if not self._images:
            raise CameraError(f"{self.name}: no images to show")
        for _, img in self._images:
            img.setflags(write=False)

    def read(self) -> Frame | None:
        self._pacer.wait()
        _, img = self._images[(self._count // self._per_image) % len(self._images)]
        self._count += 1
        return img

    def close(self) -> None:
        self._images = []


def _load_folder(folder: Path) -> list[tuple[str, Frame]]:
    if not folder.is_dir():
        raise CameraError(f"image folder {folder} does not exist")
    images = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            log.warning("skipping %s: OpenCV cannot decode it", path.name)
            continue
        images.append((path.name, cast(Frame, img)))
    if not images:
        raise CameraError(f"image folder {folder} has no readable images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def folder_source(folder: Path, fps: float, hold: float = 0.0) -> StillsSource:
    """Every image in ``folder``, sorted by name, looping; by default one image per frame."""
    return StillsSource(f"dir:{folder}", lambda: _load_folder(folder), fps, hold if hold > 0 else 1.0 / fps)


def demo_photos() -> list[tuple[str, Frame]]:
    """The demo photos as BGR frames, from the package's data folder."""
    photos = []
    for name, filename in DEMO_FILES.items():
        img = cv2.imread(str(DEMO_PHOTOS / filename), cv2.IMREAD_COLOR)
        if img is None:
            raise CameraError(f"demo photo {DEMO_PHOTOS / filename} is missing or unreadable; reinstall edge-node")
        photos.append((name, cast(Frame, img)))
    return photos
