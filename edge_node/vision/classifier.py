"""ONNX Runtime classifier: one CPU session per resolution of one precision, built up front.

Building every session at load time makes a resolution switch free at run time (no compile on the
per-frame path) and lets OTA warm a new model up completely before it is swapped in.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_node.bundle import Bundle
from edge_node.bundle.manifest import Preprocess
from edge_node.errors import InferenceError
from edge_node.messages import ClassScore, ModelRef
from edge_node.runtimes import Session, open_session
from edge_node.vision.preprocess import Preprocessor

__all__ = ["Classification", "Classifier", "Prepared", "softmax_top_k"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Classification:
    class_id: int
    label: str
    confidence: float
    top_k: list[ClassScore]
    preprocess_ms: float
    inference_ms: float
    resolution: int


def softmax_top_k(logits: npt.NDArray[np.float32], k: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """Indices and softmax probabilities of the ``k`` largest logits, best first."""
    z = logits - logits.max()
    probs = np.exp(z)
    probs /= probs.sum()
    k = min(k, probs.shape[0])
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx])]
    return idx, probs[idx]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A preprocessed frame, ready for ``Classifier.infer``. ``tensor`` is one of two alternating buffers,
    so the next frame can be prepared while this one is being inferred."""

    resolution: int
    tensor: npt.NDArray[np.float32] | npt.NDArray[np.uint8]
    preprocess_ms: float


class _Variant:
    __slots__ = ("_flip", "preprocessors", "resolution", "session")

    def __init__(self, session: Session, spec: Preprocess, resolution: int) -> None:
        self.session = session
        self.preprocessors = (Preprocessor(spec, resolution), Preprocessor(spec, resolution))
        self._flip = 0
        self.resolution = resolution

    def next_preprocessor(self) -> Preprocessor:
        self._flip ^= 1
        return self.preprocessors[self._flip]


class Classifier:
    """The ONNX files of one precision in ``bundle``, with a session per resolution built on demand.

    Sessions cost ~18 MB each for EfficientNet-Lite0 INT8, so the node keeps only the ones it serves
    (``release``) and builds another when the mode changes (``load``, from a background thread).
    ``classify`` is called by one worker thread; ``load``/``release`` are safe from any thread.
    """

    def __init__(self, bundle: Bundle, *, precision: str = "int8", threads: int = 2, top_k: int = 5) -> None:
        manifest = bundle.manifest
        if not manifest.resolutions(precision):
            log.warning("bundle %s has no %s model; using %s", manifest.name, precision, manifest.precision)
            precision = manifest.precision
        self.bundle = bundle
        self.precision = precision
        self.resolutions = manifest.resolutions(precision)
        self.top_k = top_k
        self._labels = bundle.labels
        self._threads = threads
        self._variants: dict[int, _Variant] = {}
        self._lock = threading.Lock()
        self._ref = ModelRef(name=manifest.name, version=manifest.version, precision=precision)

    @property
    def loaded(self) -> frozenset[int]:
        return frozenset(self._variants)

    def load(self, resolution: int) -> None:
        """Build the session for ``resolution`` (no-op if it exists); raises InferenceError."""
        if resolution in self._variants:
            return
        path = self.bundle.model_file(resolution, self.precision)
        m = self.bundle.manifest
        try:
            session = open_session(path, "onnxruntime", threads=self._threads)
        except InferenceError as exc:
            raise InferenceError(f"bundle {m.name} {m.version}: {exc}") from exc
        with self._lock:
            self._variants.setdefault(resolution, _Variant(session, m.preprocess, resolution))

    def release(self, keep: int) -> None:
        """Drop every session but the one for ``keep``."""
        with self._lock:
            for r in [r for r in self._variants if r != keep]:
                del self._variants[r]

    def model_ref(self) -> ModelRef:
        return self._ref

    def nearest(self, resolution: int) -> int:
        """The available resolution closest to the requested one."""
        return min(self.resolutions, key=lambda r: (abs(r - resolution), -r))

    def run(self, resolution: int, tensor: npt.NDArray[np.float32] | npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        v = self._variants[resolution]
        try:
            return v.session.run(tensor)
        except InferenceError as exc:
            raise InferenceError(f"inference failed at {resolution}px: {exc}") from exc

    def prepare(self, frame_bgr: npt.NDArray[np.uint8], resolution: int) -> Prepared:
        """Preprocess for ``resolution`` (or the nearest one the bundle has), loading its session if needed.

        Called by one thread (the pipeline's preprocess stage); the two buffers alternate, so a tensor stays
        valid until the second-next call.
        """
        if resolution not in self.resolutions:
            resolution = self.nearest(resolution)
        self.load(resolution)
        v = self._variants[resolution]
        t0 = time.perf_counter()
        tensor = v.next_preprocessor()(frame_bgr)
        return Prepared(resolution, tensor, (time.perf_counter() - t0) * 1000.0)

    def infer(self, prepared: Prepared) -> Classification:
        """Run the model on a prepared tensor and turn the scores into top-k labels."""
        t1 = time.perf_counter()
        logits = self.run(prepared.resolution, prepared.tensor).reshape(-1)
        t2 = time.perf_counter()
        if logits.shape[0] != len(self._labels):
            raise InferenceError(
                f"model returned {logits.shape[0]} scores but the bundle has {len(self._labels)} labels"
            )
        idx, probs = softmax_top_k(logits, self.top_k)
        if not math.isfinite(float(probs[0])):
            raise InferenceError("model returned non-finite scores")
        top = [
            ClassScore(label=self._labels[i], class_id=int(i), confidence=round(float(p), 5))
            for i, p in zip(idx, probs, strict=True)
        ]
        return Classification(
            class_id=top[0].class_id,
            label=top[0].label,
            confidence=top[0].confidence,
            top_k=top,
            preprocess_ms=prepared.preprocess_ms,
            inference_ms=(t2 - t1) * 1000.0,
            resolution=prepared.resolution,
        )

    def classify(self, frame_bgr: npt.NDArray[np.uint8], resolution: int) -> Classification:
        """``prepare`` then ``infer``, on the calling thread."""
        return self.infer(self.prepare(frame_bgr, resolution))

    def warmup(self, frame_bgr: npt.NDArray[np.uint8] | None = None, resolutions: list[int] | None = None) -> None:
        """Load and run each of ``resolutions`` (default: all) once, on ``frame_bgr`` or a grey frame, and
        check the outputs are sane."""
        frame = frame_bgr if frame_bgr is not None else np.full((480, 640, 3), 114, np.uint8)
        for resolution in resolutions if resolutions is not None else self.resolutions:
            out = self.run(resolution, self.prepare(frame, resolution).tensor)
            expected = (1, len(self._labels))
            if out.shape != expected:
                raise InferenceError(f"warm-up at {resolution}px gave output shape {out.shape}, expected {expected}")
            if not np.all(np.isfinite(out)):
                raise InferenceError(f"warm-up at {resolution}px gave non-finite outputs")
