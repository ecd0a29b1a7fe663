"""Still-image sources: a folder of images that loops, and the bundled demo photos."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast

import cv2

from edge_node.capture.base import Frame, Pacer
from edge_node.errors import CameraError, MissingExtraError

__all__ = ["DEMO_FILES", "StillsSource", "demo_photos", "folder_source"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# scikit-image ships these real photos in its wheel: no download needed.
DEMO_FILES = {
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "astronaut": "astronaut.png",
    "motorcycle": "motorcycle_left.png",
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
    """The demo photos as BGR frames, read straight from scikit-image's data folder.

    Importing scikit-image itself would cost the node ~40 MB of RSS (it pulls in scipy and PIL) for five
    files that OpenCV reads just as well, so only its package location is looked up.
    """
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("the demo camera source", "demo")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    photos = []
    for name, filename in DEMO_FILES.items():
        img = cv2.imread(str(folder / filename), cv2.IMREAD_COLOR)
        if img is None:
            raise CameraError(f"demo photo {folder / filename} is missing or unreadable; reinstall scikit-image")
        photos.append((name, cast(Frame, img)))
    return photos
