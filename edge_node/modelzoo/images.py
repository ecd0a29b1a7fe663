"""Labelled image folders for calibration and evaluation, and the deterministic calibration split.

Two layouts are read: flat ``<wnid>_anything.JPEG`` files (the ImageNet sample) and ImageFolder
``<wnid>/anything.jpg``; with a bundle's own labels (``labels.label_table``), ImageFolder ``<class>/*.jpg``.
Images without a known label are kept unlabelled (fine for calibration).
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

__all__ = [
    "CAMERA_FRAME_SIDE",
    "IMAGE_SUFFIXES",
    "SPLIT_RULE",
    "LabelledImage",
    "is_calibration",
    "list_images",
    "load_bgr",
    "shrink_to_frame",
    "split_calibration",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
CALIBRATION_MODULUS = 5
SPLIT_RULE = f"sha256(file name) % {CALIBRATION_MODULUS} == 0"
CAMERA_FRAME_SIDE = 480  # shorter side of the node's default 640x480 camera frame (see shrink_to_frame)


@dataclass(frozen=True, slots=True)
class LabelledImage:
    path: Path
    label: int | None  # class index (ImageNet's, or the bundle's labels), None when the name carries none


def _label(path: Path, table: dict[str, int]) -> int | None:
    if path.parent.name in table:
        return table[path.parent.name]
    return table.get(path.name.split("_", 1)[0])


def list_images(folder: Path, table: dict[str, int] | None = None) -> list[LabelledImage]:
    """Every image under ``folder`` (recursively), sorted by path, with its label if the name has one.

    ``table`` maps a folder name (or a file-name prefix before ``_``) to a class index; default: ImageNet wnids.
    """
    if not folder.is_dir():
        raise BundleError(f"image folder {folder} does not exist")
    table = wnid_index() if table is None else table
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
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


def load_bgr(path: Path, *, frame_side: int | None = None) -> npt.NDArray[np.uint8]:
    """An image as OpenCV reads camera frames: (H, W, 3) uint8 BGR, upright (EXIF orientation applied).

    With ``frame_side``, larger images are first shrunk like a camera frame (see ``shrink_to_frame``).
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise BundleError(f"cannot decode image {path}")
    frame = np.ascontiguousarray(image, dtype=np.uint8)
    return shrink_to_frame(frame, frame_side) if frame_side is not None else frame


def shrink_to_frame(image: npt.NDArray[np.uint8], side: int) -> npt.NDArray[np.uint8]:
    """Scale an image down (INTER_AREA) so its shorter side is ``side``; smaller images are returned as is.

    A 12-megapixel phone photo is not what a node's camera delivers (640x480 by default): shrinking it the way
    a camera's sensor pipeline does (area averaging) before the node's own Preprocessor makes training and
    evaluation see what the node will see, instead of a linear resize aliasing a 4000-pixel image.
    """
    shorter = min(image.shape[:2])
    if shorter <= side:
        return image
    scale = side / shorter
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
