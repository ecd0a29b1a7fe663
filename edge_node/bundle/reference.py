"""A bundle's reference set: real frames with the FP32 model's answers, for checking INT8 files on the device.

INT8 kernels differ between CPUs (ONNX Runtime's x86 U8S8 kernels saturate without VNNI, ARM has its own
kernels), so a file that agreed with FP32 on the build machine can disagree on the node's. The build stores
a few dozen JPEG frames (``reference/*.jpg``) and, in the signed manifest, the FP32 model's top-5 class ids
for each frame at every resolution plus the gate (``min_agreement``). The node runs each INT8 candidate on
these frames through its own Preprocessor and session and serves it only when :func:`agreement` reaches the
gate. Bundles made before reference sets have none: :func:`load_reference` returns None and the node trusts
the build's metrics. No torch here: this runs on the Pi.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge_node.bundle import Bundle
from edge_node.bundle.manifest import ReferenceInfo
from edge_node.errors import BundleError, InferenceError
from edge_node.runtimes.base import Session, Tensor

__all__ = ["ReferenceCheck", "ReferenceSet", "agreement", "check_session", "load_reference", "read_reference"]

Frame = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class ReferenceSet:
    """Decoded reference frames (BGR uint8, as a camera delivers them) and the FP32 answers for them."""

    names: tuple[str, ...]
    frames: tuple[Frame, ...]
    top5: dict[int, npt.NDArray[np.int64]]  # resolution -> (images, 5) FP32 class ids, best first
    min_agreement: float

    def expected(self, resolution: int) -> npt.NDArray[np.int64]:
        """The FP32 top-1 class id of every frame at ``resolution``."""
        try:
            return self.top5[resolution][:, 0]
        except KeyError:
            have = sorted(self.top5)
            raise BundleError(f"the reference set has no FP32 answers at {resolution}px; it has {have}") from None


@dataclass(frozen=True, slots=True)
class ReferenceCheck:
    """One model file measured on the reference set."""

    resolution: int
    agreement: float  # share of frames whose top-1 equals the FP32 top-1
    min_agreement: float
    disagreeing: tuple[str, ...]  # frames whose top-1 differs

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_agreement

    def describe(self) -> str:
        verdict = "passes" if self.passed else "FAILS"
        return (
            f"{verdict} the reference check at {self.resolution}px: {self.agreement:.1%} top-1 agreement with FP32 "
            f"(gate {self.min_agreement:.1%}, {len(self.disagreeing)} of the frames differ)"
        )


def load_reference(bundle: Bundle) -> ReferenceSet | None:
    """The bundle's reference set, decoded; None for bundles without one. The files were hash-checked on open."""
    info = bundle.manifest.reference
    return None if info is None else read_reference(bundle.path, info)


def read_reference(directory: Path, info: ReferenceInfo) -> ReferenceSet:
    """Decode the reference frames ``info`` lists from ``directory`` (a bundle, or a build's staging folder)."""
    frames: list[Frame] = []
    for image in info.images:
        try:
            data = np.fromfile(directory / image.file, dtype=np.uint8)
        except OSError as exc:
            raise BundleError(f"cannot read reference image {image.file} in {directory}: {exc}") from exc
        frame = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if frame is None:
            raise BundleError(f"reference image {image.file} in {directory} cannot be decoded; rebuild the bundle")
        frames.append(np.ascontiguousarray(frame, dtype=np.uint8))
    resolutions = sorted(set.intersection(*(set(image.top5) for image in info.images)))
    top5 = {r: np.array([image.top5[r][:5] for image in info.images], dtype=np.int64) for r in resolutions}
    return ReferenceSet(
        names=tuple(image.file for image in info.images),
        frames=tuple(frames),
        top5=top5,
        min_agreement=info.min_agreement,
    )


Ids = Sequence[int] | npt.NDArray[np.int64]


def agreement(expected: Ids, predicted: Ids) -> float:
    """Share of positions where ``predicted`` equals ``expected`` (top-1 class ids, same order)."""
    want, got = np.asarray(expected), np.asarray(predicted)
    if want.shape != got.shape or want.ndim != 1 or not len(want):
        raise ValueError(f"expected two equally long, non-empty lists of class ids, got {want.shape} and {got.shape}")
    return float(np.mean(want == got))


def check_session(
    reference: ReferenceSet, resolution: int, session: Session, preprocess: Callable[[Frame], Tensor]
) -> ReferenceCheck:
    """Run ``session`` on every reference frame (through ``preprocess``, the node's Preprocessor) and compare.

    Raises InferenceError when the session fails; a file that runs but disagrees comes back with
    ``passed`` False.
    """
    expected = reference.expected(resolution)
    predicted = np.empty(len(reference.frames), dtype=np.int64)
    for i, frame in enumerate(reference.frames):
        logits = session.run(preprocess(frame))
        if logits.ndim != 2 or logits.shape[0] != 1:
            raise InferenceError(f"the model returned logits of shape {logits.shape}, not (1, classes)")
        if not np.all(np.isfinite(logits)):
            raise InferenceError(f"the model returned non-finite logits on reference frame {reference.names[i]}")
        predicted[i] = int(np.argmax(logits[0]))
    differ = tuple(name for name, want, got in zip(reference.names, expected, predicted, strict=True) if want != got)
    return ReferenceCheck(
        resolution=resolution,
        agreement=agreement(expected, predicted),
        min_agreement=reference.min_agreement,
        disagreeing=differ,
    )
