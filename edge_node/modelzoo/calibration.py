"""Where calibration frames come from: a labelled image folder (split) or scikit-image's bundled photos.

Calibration runs through the node's own Preprocessor, so INT8 ranges are measured on exactly the tensors the
node will feed. Held-out labelled images (never used for calibration) give the build-time accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge_node.errors import MissingExtraError
from edge_node.modelzoo.images import SPLIT_RULE, LabelledImage, list_images, load_bgr, split_calibration

__all__ = ["SKIMAGE_PHOTOS", "CalibrationSet", "from_folder", "from_skimage"]

Frame = npt.NDArray[np.uint8]

# Photos that ship inside scikit-image (no download). chelsea/cat are left out: they are the demo's test cat.
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "rocket",
    "stereo_motorcycle",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
    "camera",
    "brick",
    "coins",
    "grass",
    "gravel",
    "moon",
    "clock",
    "text",
)


@dataclass(frozen=True)
class CalibrationSet:
    frames: list[Frame]  # BGR uint8, any size: each resolution's Preprocessor makes its own tensors
    names: list[str]
    source: str
    held_out: list[LabelledImage] = field(default_factory=list)

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "count": len(self.frames), "images": list(self.names)}


def from_folder(folder: Path, *, limit: int = 100, table: dict[str, int] | None = None) -> CalibrationSet:
    """Calibrate on the folder's deterministic calibration split; keep the rest for accuracy.

    ``table`` names the classes (``labels.label_table``); default: ImageNet wnids.
    """
    images = list_images(folder, table)
    calib, held = split_calibration(images, limit=limit)
    source = f"{folder.name}/ ({SPLIT_RULE}, {len(calib)} of {len(images)} images)" if held else folder.name
    return CalibrationSet(
        frames=[load_bgr(im.path) for im in calib],
        names=[im.path.name for im in calib],
        source=source,
        held_out=[im for im in held if im.label is not None],
    )


def from_skimage(*, count: int = 64, seed: int = 0) -> CalibrationSet:
    """Augmented crops and flips of scikit-image's bundled photos: calibration without any dataset."""
    try:
        from skimage import data
    except ImportError as exc:
        raise MissingExtraError("calibrating without an image folder", "export") from exc
    photos = [(name, _photo(getattr(data, name)())) for name in SKIMAGE_PHOTOS]
    rng = np.random.default_rng(seed)
    frames: list[Frame] = []
    names: list[str] = []
    for i in range(count):
        name, photo = photos[i % len(photos)]
        frames.append(_augment(photo, rng))
        names.append(f"skimage:{name}#{i // len(photos)}")
    return CalibrationSet(frames=frames, names=names, source=f"scikit-image photos, {count} augmented crops")


def _photo(loaded: object) -> Frame:
    """A scikit-image sample (RGB, grey or a stereo tuple) as a BGR uint8 frame."""
    image = np.asarray(loaded[0] if isinstance(loaded, tuple) else loaded)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=2)
    rgb = np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)
    return np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), dtype=np.uint8)


def _augment(photo: Frame, rng: np.random.Generator) -> Frame:
    """A random 50-100% crop, a random horizontal flip and a random brightness/contrast change."""
    h, w = photo.shape[:2]
    scale = rng.uniform(0.5, 1.0)
    ch, cw = max(32, int(h * scale)), max(32, int(w * scale))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = photo[top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
    return np.ascontiguousarray(np.clip(crop.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8))
