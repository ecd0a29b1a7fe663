"""Build the bundle's reference set: a few dozen JPEG frames and the FP32 (PyTorch) model's answers for them.

Frames come from the build's held-out images (never the calibration ones, whose ranges the INT8 files were
fitted to) or, when a folder is too small to hold any out, from the calibration frames. Each is stored as
the centre square of the photo, scaled so that the node's crop (``crop_pct``) of it is exactly the largest
resolution, JPEG-encoded; the FP32 answers are computed on the *decoded* JPEG through the node's own
Preprocessor, so the node compares like with like. Frames whose FP32 top-1 is nearly tied with the
runner-up (softmax margin below ``min_margin`` at any resolution) are passed over: any kernel's rounding
flips them, which would make a healthy INT8 file look broken. (An untrained model has only such frames;
then the clearest of them are used.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from edge_node.bundle.manifest import Preprocess, ReferenceImage, ReferenceInfo
from edge_node.errors import BundleError
from edge_node.modelzoo.calibration import CalibrationSet
from edge_node.modelzoo.export import torch_logits
from edge_node.modelzoo.images import load_bgr
from edge_node.vision.preprocess import Preprocessor, center_square

if TYPE_CHECKING:
    import torch

__all__ = ["REFERENCE_DIR", "make_reference", "reference_frame"]

REFERENCE_DIR = "reference"
JPEG_QUALITY = 80  # 40 frames of 256 px: ~0.65 MB; the FP32 answers are computed on the decoded JPEGs

SCAN_FACTOR = 4  # look at most at this many candidates per wanted frame

Frame = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class _Candidate:
    name: str
    jpeg: bytes
    top5: dict[int, list[int]]
    margin: float  # smallest FP32 top-1/top-2 softmax margin over the resolutions


def reference_frame(frame: Frame, spec: Preprocess, resolution: int) -> bytes:
    """The frame's centre square, sized so that the node's crop of it is ``resolution`` pixels, as JPEG."""
    top, left, side = center_square(frame.shape[0], frame.shape[1], 1.0)
    size = round(resolution / spec.crop_pct)
    square = cv2.resize(frame[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", square, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise BundleError("OpenCV could not JPEG-encode a reference frame")
    return data.tobytes()


def _candidates(calibration: CalibrationSet) -> Iterator[tuple[str, Frame]]:
    if calibration.held_out:
        for image in calibration.held_out:
            yield image.path.name, load_bgr(image.path)
    else:
        yield from zip(calibration.names, calibration.frames, strict=True)


def _margins(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Softmax probability of the top class minus the runner-up's, per row."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    top2 = np.sort(p, axis=1)[:, -2:]
    return np.asarray(top2[:, 1] - top2[:, 0], dtype=np.float32)


def make_reference(
    model: torch.nn.Module,
    spec: Preprocess,
    resolutions: Sequence[int],
    calibration: CalibrationSet,
    staging: Path,
    *,
    count: int = 40,
    min_agreement: float = 0.9,
    min_margin: float = 0.05,
) -> ReferenceInfo:
    """Write ``count`` reference frames under ``staging/reference/`` and return the manifest's description."""
    preprocessors = {r: Preprocessor(spec, r) for r in resolutions}
    clear: list[_Candidate] = []
    unclear: list[_Candidate] = []
    for seen, (name, frame) in enumerate(_candidates(calibration)):
        if len(clear) >= count or seen >= SCAN_FACTOR * count:
            break
        data = reference_frame(frame, spec, max(resolutions))
        decoded = np.asarray(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), dtype=np.uint8)
        top5: dict[int, list[int]] = {}
        margin = 1.0
        for r, preprocess in preprocessors.items():
            logits = torch_logits(model, [np.array(preprocess(decoded), dtype=np.float32)])
            margin = min(margin, float(_margins(logits)[0]))
            top5[r] = [int(c) for c in np.argsort(-logits[0])[:5]]
        (clear if margin >= min_margin else unclear).append(_Candidate(name, data, top5, margin))
    # An untrained model has no clear answers: fill up with the clearest of the rest rather than ship none.
    chosen = clear + sorted(unclear, key=lambda c: -c.margin)[: count - len(clear)]
    if not chosen:
        raise BundleError("no images to make a reference set from; pass --calib DIR with a few dozen photos")
    (staging / REFERENCE_DIR).mkdir(exist_ok=True)
    images: list[ReferenceImage] = []
    for i, candidate in enumerate(chosen):
        file = f"{REFERENCE_DIR}/ref_{i:03d}.jpg"
        (staging / file).write_bytes(candidate.jpeg)
        images.append(ReferenceImage(file=file, top5=candidate.top5, origin=candidate.name))
    unclear_used = len(chosen) - len(clear)
    source = "held-out images (never calibrated on)" if calibration.held_out else "calibration frames"
    return ReferenceInfo(
        images=images,
        min_agreement=min_agreement,
        source=f"{source}; calibration: {calibration.source}; {unclear_used} with an FP32 top-2 margin < {min_margin}",
    )
