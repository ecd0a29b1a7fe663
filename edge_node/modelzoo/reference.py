"""Build the bundle's reference set: a few dozen JPEG frames and the FP32 (PyTorch) model's answers for them.

Frames come from the build's held-out images (never the calibration ones, whose ranges the INT8 files were
fitted to), evenly spaced over them, or, when a folder is too small to hold any out, from the calibration
frames. Each is stored as the centre square of the photo, scaled so that the node's crop (``crop_pct``) of
it is exactly the largest resolution, JPEG-encoded; the FP32 answers (top-5 class ids and their
log-probabilities) are computed on the *decoded* JPEG through the node's own Preprocessor, so the node
compares like with like. Frames are not filtered by their FP32 margin: the divergence gate
(``edge_node.bundle.reference``) needs the near-boundary frames as much as the clear ones, and the build
sets each file's gate from its own figure on exactly these frames.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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

__all__ = ["DIVERGENCE_TOLERANCE", "REFERENCE_DIR", "divergence_gate", "make_reference", "reference_frame"]

REFERENCE_DIR = "reference"
JPEG_QUALITY = 80  # 40 frames of 256 px: ~0.65 MB; the FP32 answers are computed on the decoded JPEGs

# A file's divergence gate: its figure on the build machine times (1 + relative) plus absolute. Chosen from
# bench/int8_gate_power.py's measurements (docs/model-bundles.md): other CPUs' kernels move a healthy file's
# figure by far less, a file with <= 95% held-out agreement moves it by far more.
DIVERGENCE_TOLERANCE = (0.5, 0.002)

Frame = npt.NDArray[np.uint8]


def divergence_gate(measured: float, tolerance: tuple[float, float] = DIVERGENCE_TOLERANCE) -> float:
    """The gate a file gets from its mean divergence on the build machine."""
    relative, absolute = tolerance
    return round(measured * (1.0 + relative) + absolute, 6)


def reference_frame(frame: Frame, spec: Preprocess, resolution: int) -> bytes:
    """The frame's centre square, sized so that the node's crop of it is ``resolution`` pixels, as JPEG."""
    top, left, side = center_square(frame.shape[0], frame.shape[1], 1.0)
    size = round(resolution / spec.crop_pct)
    square = cv2.resize(frame[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", square, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise BundleError("OpenCV could not JPEG-encode a reference frame")
    return data.tobytes()


def _candidates(calibration: CalibrationSet, count: int) -> Iterator[tuple[str, Frame]]:
    """``count`` held-out images evenly spaced over the held-out list (so over its classes), else calibration."""
    if calibration.held_out:
        step = max(1, len(calibration.held_out) // count)
        for image in calibration.held_out[::step][:count]:
            yield image.path.name, load_bgr(image.path)
    else:
        yield from list(zip(calibration.names, calibration.frames, strict=True))[:count]


def _log_softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return np.asarray(z - np.log(np.exp(z).sum(axis=-1, keepdims=True)), dtype=np.float64)


def make_reference(
    model: torch.nn.Module,
    spec: Preprocess,
    resolutions: Sequence[int],
    calibration: CalibrationSet,
    staging: Path,
    *,
    count: int = 40,
    min_agreement: float = 0.9,
) -> ReferenceInfo:
    """Write ``count`` reference frames under ``staging/reference/`` and return the manifest's description.

    The divergence gates (``max_divergence``) are left empty: the build fills them in from its own INT8 files.
    """
    preprocessors = {r: Preprocessor(spec, r) for r in resolutions}
    (staging / REFERENCE_DIR).mkdir(exist_ok=True)
    images: list[ReferenceImage] = []
    for i, (name, frame) in enumerate(_candidates(calibration, count)):
        data = reference_frame(frame, spec, max(resolutions))
        decoded = np.asarray(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), dtype=np.uint8)
        top5: dict[int, list[int]] = {}
        logprobs: dict[int, list[float]] = {}
        for r, preprocess in preprocessors.items():
            logp = _log_softmax(torch_logits(model, [np.array(preprocess(decoded), dtype=np.float32)])[0])
            best = np.argsort(-logp)[:5]
            top5[r] = [int(c) for c in best]
            logprobs[r] = [min(0.0, round(float(logp[c]), 6)) for c in best]
        file = f"{REFERENCE_DIR}/ref_{i:03d}.jpg"
        (staging / file).write_bytes(data)
        images.append(ReferenceImage(file=file, top5=top5, logprobs=logprobs, origin=name))
    if not images:
        raise BundleError("no images to make a reference set from; pass --calib DIR with a few dozen photos")
    source = "held-out images (never calibrated on)" if calibration.held_out else "calibration frames"
    return ReferenceInfo(
        images=images,
        min_agreement=min_agreement,
        source=f"{source}, evenly spaced, any FP32 margin; calibration: {calibration.source}",
    )
