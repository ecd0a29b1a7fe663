"""Training views of a photo that stay close to what the node's camera and Preprocessor will produce.

A view is a random window of the frame (mild zoom and shift), maybe mirrored, with mild brightness,
contrast and saturation changes. It is then fed to the node's own ``Preprocessor`` (same centre crop,
interpolation and normalisation), so the model never trains on a geometry the node does not produce:
no rotations, no heavy crops, no blur. Pure numpy/OpenCV, seeded by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Jitter", "augment"]

Frame = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Jitter:
    area: tuple[float, float] = (0.6, 1.0)  # share of the frame's area the window keeps
    aspect: tuple[float, float] = (0.8, 1.25)  # window aspect ratio relative to the frame's
    flip: float = 0.5  # probability of a horizontal mirror
    brightness: float = 0.2  # +- share of full scale added
    contrast: float = 0.2  # +- gain around the mean
    saturation: float = 0.2  # +- gain of the distance from grey

    def describe(self) -> dict[str, object]:
        return {
            "area": list(self.area),
            "aspect": list(self.aspect),
            "flip": self.flip,
            "brightness": self.brightness,
            "contrast": self.contrast,
            "saturation": self.saturation,
        }


def augment(frame: Frame, rng: np.random.Generator, jitter: Jitter = Jitter()) -> Frame:
    """One random view of a BGR uint8 frame (a new array; ``frame`` is not modified)."""
    h, w = frame.shape[:2]
    area = rng.uniform(*jitter.area)
    aspect = float(np.exp(rng.uniform(np.log(jitter.aspect[0]), np.log(jitter.aspect[1]))))
    cw = min(w, max(8, round(w * np.sqrt(area * aspect))))
    ch = min(h, max(8, round(h * np.sqrt(area / aspect))))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    view = frame[top : top + ch, left : left + cw]
    if rng.random() < jitter.flip:
        view = view[:, ::-1]
    pixels = view.astype(np.float32)
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = grey + (pixels - grey) * rng.uniform(1 - jitter.saturation, 1 + jitter.saturation)
    mean = float(pixels.mean())
    pixels = mean + (pixels - mean) * rng.uniform(1 - jitter.contrast, 1 + jitter.contrast)
    pixels += 255.0 * rng.uniform(-jitter.brightness, jitter.brightness)
    return np.ascontiguousarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
