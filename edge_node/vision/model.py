"""What the node serves: a bundle's files for one runtime and precision, loaded one resolution at a time.

A :class:`Model` names the files; :meth:`Model.build` loads one resolution into a :class:`Variant`: a session
per inference worker, the preprocessor and a small pool of tensor buffers. A job prepared on a variant holds
it, so the variant and its sessions stay valid until that job is done, whatever the pipeline has decided
about the variant meanwhile. Nothing on the frame path looks a session up by resolution: nothing can vanish
under a running frame.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from edge_node.bundle import Bundle
from edge_node.errors import InferenceError
from edge_node.runtimes import Runtime, Session, Tensor, open_session
from edge_node.vision.preprocess import Preprocessor

__all__ = ["BufferPool", "Classification", "Model", "ModelInfo", "Score", "Variant", "softmax_top_k"]

log = logging.getLogger(__name__)

GREY = np.full((480, 640, 3), 114, np.uint8)  # a neutral frame for checks when no camera frame is at hand


class Score(NamedTuple):
    class_id: int
    label: str
    confidence: float


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Which model produced a result (the wire's ``model`` object)."""

    name: str
    version: str
    precision: str
    runtime: str


@dataclass(frozen=True, slots=True)
class Classification:
    top_k: tuple[Score, ...]
    resolution: int
    preprocess_ms: float
    inference_ms: float

    @property
    def best(self) -> Score:
        return self.top_k[0]


def softmax_top_k(logits: npt.NDArray[np.float32], k: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """Indices and softmax probabilities of the ``k`` largest logits, best first."""
    z = logits - logits.max()
    probs = np.exp(z)
    probs /= probs.sum()
    k = min(k, probs.shape[0])
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx])]
    return idx, probs[idx]


class BufferPool:
    """Input tensors lent to jobs: a job owns its buffer until its worker gives it back, so a buffer is never
    written while it is being inferred. An empty pool makes the worker wait (back-pressure)."""

    def __init__(self, preprocessor: Preprocessor, count: int) -> None:
        self._free = [preprocessor.new_output() for _ in range(count)]
        self._cond = threading.Condition()

    def acquire(self, timeout: float) -> Tensor | None:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._free), timeout):
                return None
            return self._free.pop()

    def release(self, buffer: Tensor) -> None:
        with self._cond:
            self._free.append(buffer)
            self._cond.notify()


class Variant:
    """One resolution of a model, loaded: ``sessions[i]`` belongs to inference worker ``i``."""

    def __init__(self, model: Model, resolution: int, sessions: Sequence[Session]) -> None:
        self.model = model
        self.resolution = resolution
        self.sessions = tuple(sessions)
        manifest = model.bundle.manifest
        layout = manifest.layout(manifest.variant(resolution, model.precision, model.runtime))
        self.preprocessor = Preprocessor(manifest.preprocess, resolution, layout=layout)
        # One buffer per worker plus the one being prepared: what the pipeline's back-pressure allows in flight.
        self.buffers = BufferPool(self.preprocessor, len(self.sessions) + 1)

    def __repr__(self) -> str:
        return f"Variant({self.model.info.version} {self.model.info.runtime} {self.resolution}px)"

    def prepare(self, frame: npt.NDArray[np.uint8], out: Tensor) -> float:
        """Preprocess ``frame`` into ``out``; returns the milliseconds it took (the worker that runs the job)."""
        t0 = time.perf_counter()
        self.preprocessor(frame, out)
        return (time.perf_counter() - t0) * 1000.0

    def infer(self, worker: int, tensor: Tensor, preprocess_ms: float) -> Classification:
        """Run worker ``worker``'s session on ``tensor`` and turn the scores into top-k labels."""
        t0 = time.perf_counter()
        logits = self.sessions[worker].run(tensor).reshape(-1)
        inference_ms = (time.perf_counter() - t0) * 1000.0
        return Classification(self.model.scores(logits), self.resolution, preprocess_ms, inference_ms)

    def check(self, frame: npt.NDArray[np.uint8] | None = None) -> None:
        """Run every session once on ``frame`` (or a grey frame) and check the outputs; raises InferenceError."""
        tensor = self.preprocessor(frame if frame is not None else GREY)
        expected = (1, len(self.model.labels))
        for session in self.sessions:
            out = session.run(tensor)
            if out.shape != expected:
                raise InferenceError(
                    f"{self!r}: the model gave output shape {out.shape}, the bundle's labels need {expected}"
                )
            if not np.all(np.isfinite(out)):
                raise InferenceError(f"{self!r}: the model gave non-finite outputs")


class Model:
    """The files of one runtime and precision in ``bundle``; builds a :class:`Variant` per resolution."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        runtime: Runtime = "onnxruntime",
        precision: str = "int8",
        workers: int = 1,
        threads: int = 1,
        top_k: int = 5,
        spin: bool = False,
    ) -> None:
        manifest = bundle.manifest
        self.resolutions = manifest.resolutions(precision, runtime)
        if not self.resolutions:
            raise InferenceError(
                f"bundle {manifest.name} {manifest.version} has no {runtime} {precision} files; "
                f"it has {sorted({(v.runtime, v.precision) for v in manifest.variants})}"
            )
        self.bundle = bundle
        self.labels = bundle.labels
        self.workers = workers
        self.threads = threads  # per worker session
        self.spin = spin  # the runtime's pool threads busy-wait between runs (ModelConfig.spin)
        self.top_k = top_k
        self.runtime: Runtime = runtime
        self.precision = precision
        self.info = ModelInfo(manifest.name, manifest.version, precision, runtime)

    def __repr__(self) -> str:
        i = self.info
        return f"Model({i.name} {i.version} {i.runtime} {i.precision})"

    def nearest(self, resolution: int) -> int:
        """The available resolution closest to ``resolution`` (the larger one on a tie)."""
        return min(self.resolutions, key=lambda r: (abs(r - resolution), -r))

    def build(self, resolution: int) -> Variant:
        """Load the sessions for ``resolution`` (blocking; call it off the frame path); raises InferenceError."""
        path = self.bundle.model_file(resolution, self.precision, self.runtime)
        t0 = time.perf_counter()
        try:
            sessions = [
                open_session(path, self.runtime, threads=self.threads, spin=self.spin) for _ in range(self.workers)
            ]
        except InferenceError as exc:
            raise InferenceError(f"bundle {self.info.name} {self.info.version}: {exc}") from exc
        ms = 1000 * (time.perf_counter() - t0)
        log.debug("built %s %dpx (%d sessions) in %.0f ms", self, resolution, self.workers, ms)
        return Variant(self, resolution, sessions)

    def scores(self, logits: npt.NDArray[np.float32]) -> tuple[Score, ...]:
        if logits.shape[0] != len(self.labels):
            raise InferenceError(
                f"model returned {logits.shape[0]} scores but the bundle has {len(self.labels)} labels"
            )
        idx, probs = softmax_top_k(logits, self.top_k)
        if not math.isfinite(float(probs[0])):
            raise InferenceError("model returned non-finite scores")
        labels = self.labels  # plain ints and floats (tolist) are cheaper to handle than numpy scalars, per frame
        return tuple(Score(i, labels[i], round(p, 5)) for i, p in zip(idx.tolist(), probs.tolist(), strict=True))
