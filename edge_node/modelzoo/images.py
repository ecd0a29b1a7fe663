"""Labelled image folders for calibration and evaluation, and the deterministic calibration split.

Two layouts are read: flat ``<wnid>_anything.JPEG`` files (the ImageNet sample) and ImageFolder
``<wnid>/anything.jpg``. Images without a known wnid are kept unlabelled (fine for calibration).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge_node.errors import BundleError
from edge_node.modelzoo.labels import wnid_index

__all__ = ["SPLIT_RULE", "LabelledImage", "is_calibration", "list_images", "load_bgr", "split_calibration"]

_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CALIBRATION_MODULUS = 5
SPLIT_RULE = f"sha256(file name) % {CALIBRATION_MODULUS} == 0"


@dataclass(frozen=True, slots=True)
class LabelledImage:
    path: Path
    label: int | None  # ImageNet class index, None when the name carries no known wnid


def _label(path: Path, table: dict[str, int]) -> int | None:
    if path.parent.name in table:
        return table[path.parent.name]
    return table.get(path.name.split("_", 1)[0])


def list_images(folder: Path) -> list[LabelledImage]:
    """Every image under ``folder`` (recursively), sorted by path, with its label if the name has one."""
    if not folder.is_dir():
        raise BundleError(f"image folder {folder} does not exist")
    table = wnid_index()
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _SUFFIXES and p.is_file())
    if not paths:
        raise BundleError(f"{folder} contains no images (.jpg, .jpeg, .png, .bmp, .webp)")
    return [LabelledImage(p, _label(p, table)) for p in paths]


def is_calibration(path: Path) -> bool:
    """The split depends only on the file name, so it is stable across folders, subsets and machines."""
    return int(hashlib.sha256(path.name.encode()).hexdigest(), 16) % CALIBRATION_MODULUS == 0


def split_calibration(
    images: Sequence[LabelledImage], *, limit: int, min_held_out: int = 20
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(calibration, held-out). Small folders (too few to hold any out) are used whole for calibration."""
    calib = [im for im in images if is_calibration(im.path)]
    held = [im for im in images if not is_calibration(im.path)]
    if len(held) < min_held_out or not calib:
        return list(images)[:limit], []
    return calib[:limit], held


def load_bgr(path: Path) -> npt.NDArray[np.uint8]:
    """An image as OpenCV reads camera frames: (H, W, 3) uint8 BGR."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise BundleError(f"cannot decode image {path}")
    return np.ascontiguousarray(image)
