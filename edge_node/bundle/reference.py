"""A bundle's reference set: real frames with the FP32 model's answers, for checking INT8 files on the device.

INT8 kernels differ between CPUs (ONNX Runtime's x86 U8S8 kernels saturate without VNNI, ARM has its own
kernels), so a file that agreed with FP32 on the build machine can disagree on the node's. The build stores
a few dozen JPEG frames (``reference/*.jpg``) and, in the signed manifest, the FP32 model's top-5 class ids
and their log-probabilities for each frame at every resolution, plus the gate. The node runs each INT8
candidate on these frames through its own Preprocessor and session and serves it only when it passes.

The gate (docs/model-bundles.md measures its power): the mean over the frames of :func:`divergence`, the KL
divergence of the INT8 output from FP32's over the five FP32 top classes and "the rest", must stay at most
``max_divergence[file]``, the build machine's own figure for that file plus a tolerance. A continuous measure
on every frame, near-boundary ones included, tells a 97%-agreement file from a 91% one on a few dozen frames,
which top-1 agreement cannot. Bundles made before it (no log-probabilities) keep the top-1 gate
(``min_agreement``); bundles made before reference sets have none: :func:`load_reference` returns None and the
node trusts the build's metrics. No torch here: this runs on the Pi.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge_node.bundle import Bundle
from edge_node.bundle.manifest import ReferenceInfo
from edge_node.errors import BundleError, InferenceError
from edge_node.runtimes.base import Session, Tensor

__all__ = [
    "ReferenceCheck",
    "ReferenceSet",
    "agreement",
    "check_session",
    "divergence",
    "load_reference",
    "read_reference",
]

Frame = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class ReferenceSet:
    """Decoded reference frames (BGR uint8, as a camera delivers them) and the FP32 answers for them."""

    names: tuple[str, ...]
    frames: tuple[Frame, ...]
    top5: dict[int, npt.NDArray[np.int64]]  # resolution -> (images, 5) FP32 class ids, best first
    min_agreement: float
    logprobs: dict[int, npt.NDArray[np.float64]] = field(default_factory=dict)  # resolution -> (images, 5)
    max_divergence: dict[str, float] = field(default_factory=dict)  # INT8 file -> gate; empty: top-1 gate

    def expected(self, resolution: int) -> npt.NDArray[np.int64]:
        """The FP32 top-1 class id of every frame at ``resolution``."""
        try:
            return self.top5[resolution][:, 0]
        except KeyError:
            have = sorted(self.top5)
            raise BundleError(f"the reference set has no FP32 answers at {resolution}px; it has {have}") from None

    def gate(self, file: str | None, resolution: int) -> float | None:
        """The divergence gate for ``file`` at ``resolution``; None when the top-1 gate applies (older bundles)."""
        if file is None or file not in self.max_divergence or resolution not in self.logprobs:
            return None
        return self.max_divergence[file]


@dataclass(frozen=True, slots=True)
class ReferenceCheck:
    """One model file measured on the reference set."""

    resolution: int
    agreement: float  # share of frames whose top-1 equals the FP32 top-1
    min_agreement: float
    disagreeing: tuple[str, ...]  # frames whose top-1 differs
    divergence: float | None = None  # mean KL divergence from FP32 over the frames (bundles that store logprobs)
    max_divergence: float | None = None  # its gate; None: the top-1 gate applies

    @property
    def passed(self) -> bool:
        if self.max_divergence is not None and self.divergence is not None:
            return self.divergence <= self.max_divergence
        return self.agreement >= self.min_agreement

    def describe(self) -> str:
        verdict = "passes" if self.passed else "FAILS"
        if self.max_divergence is not None and self.divergence is not None:
            return (
                f"{verdict} the reference check at {self.resolution}px: mean divergence from FP32 "
                f"{self.divergence:.4f} (gate {self.max_divergence:.4f}); {self.agreement:.1%} top-1 agreement"
            )
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
    scored = sorted(set.intersection(*(set(image.logprobs) for image in info.images)))
    logprobs = {r: np.array([image.logprobs[r][:5] for image in info.images], dtype=np.float64) for r in scored}
    return ReferenceSet(
        names=tuple(image.file for image in info.images),
        frames=tuple(frames),
        top5=top5,
        min_agreement=info.min_agreement,
        logprobs=logprobs,
        max_divergence=dict(info.max_divergence),
    )


Ids = Sequence[int] | npt.NDArray[np.int64]


def agreement(expected: Ids, predicted: Ids) -> float:
    """Share of positions where ``predicted`` equals ``expected`` (top-1 class ids, same order)."""
    want, got = np.asarray(expected), np.asarray(predicted)
    if want.shape != got.shape or want.ndim != 1 or not len(want):
        raise ValueError(f"expected two equally long, non-empty lists of class ids, got {want.shape} and {got.shape}")
    return float(np.mean(want == got))


_EPS = 1e-12


def divergence(
    top5: npt.NDArray[np.int64], fp32_logprobs: npt.NDArray[np.float64], logits: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """Per-frame KL(FP32 || model) over the FP32 top-5 classes and one bucket for all the others.

    ``top5`` and ``fp32_logprobs`` are (frames, k): the stored FP32 class ids and their log-probabilities;
    ``logits`` (frames, classes) the model's raw outputs. Merging the other classes into one bucket keeps
    what a bundle must store small and, by the data-processing inequality, never exceeds the full KL.
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_q_all = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    log_q = np.take_along_axis(log_q_all, top5, axis=1)
    p = np.exp(fp32_logprobs)
    p_rest = np.clip(1.0 - p.sum(axis=1), _EPS, 1.0)
    q_rest = np.clip(1.0 - np.exp(log_q).sum(axis=1), _EPS, 1.0)
    kl = (p * (fp32_logprobs - log_q)).sum(axis=1) + p_rest * (np.log(p_rest) - np.log(q_rest))
    return np.asarray(np.maximum(kl, 0.0), dtype=np.float64)


def check_session(
    reference: ReferenceSet,
    resolution: int,
    session: Session,
    preprocess: Callable[[Frame], Tensor],
    file: str | None = None,
) -> ReferenceCheck:
    """Run ``session`` on every reference frame (through ``preprocess``, the node's Preprocessor) and compare.

    ``file`` names the bundle's INT8 file the session runs: its divergence gate applies when the bundle has
    one, the top-1 gate otherwise. Raises InferenceError when the session fails; a file that runs but
    disagrees comes back with ``passed`` False.
    """
    expected = reference.expected(resolution)
    outputs = []
    for i, frame in enumerate(reference.frames):
        logits = session.run(preprocess(frame))
        if logits.ndim != 2 or logits.shape[0] != 1:
            raise InferenceError(f"the model returned logits of shape {logits.shape}, not (1, classes)")
        if not np.all(np.isfinite(logits)):
            raise InferenceError(f"the model returned non-finite logits on reference frame {reference.names[i]}")
        outputs.append(np.asarray(logits[0], dtype=np.float64))
    stacked = np.stack(outputs)
    predicted = stacked.argmax(axis=1).astype(np.int64)
    differ = tuple(name for name, want, got in zip(reference.names, expected, predicted, strict=True) if want != got)
    gate = reference.gate(file, resolution)
    mean_kl = None
    if resolution in reference.logprobs:
        mean_kl = float(divergence(reference.top5[resolution], reference.logprobs[resolution], stacked).mean())
    return ReferenceCheck(
        resolution=resolution,
        agreement=agreement(expected, predicted),
        min_agreement=reference.min_agreement,
        disagreeing=differ,
        divergence=mean_kl,
        max_divergence=gate,
    )
