"""The two worker stages: newest frame → preprocess (thread 1) → ORT + top-k (thread 2) → result.

The capture thread fills a one-frame slot; the preprocess stage takes whatever is newest, so a slow model
never builds a backlog, and prepares the next tensor while the inference stage runs the current one (ORT
releases the GIL). The stages hand over through a second one-item slot with back-pressure, and the two
tensor buffers alternate, so nothing is copied or queued. Results go to ``on_result`` (the app hands
them to the event loop). The classifier can be swapped atomically between two frames, which is how OTA
activates a new model without a gap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_node.capture.base import Frame
from edge_node.capture.grabber import Grabber
from edge_node.domain import Mode
from edge_node.errors import InferenceError
from edge_node.messages import ModelRef
from edge_node.slot import LatestSlot
from edge_node.vision.classifier import Classification, Classifier, Prepared
from edge_node.vision.meters import Ewma, RateMeter
from edge_node.vision.modes import ModeController

__all__ = ["Outcome", "Pipeline", "Result"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Result:
    """One classified frame, with everything a Prediction message needs."""

    seq: int
    ts: float
    classification: Classification
    fps: float
    total_ms: float
    mode: Mode
    model: ModelRef


@dataclass(frozen=True, slots=True)
class _Job:
    """A prepared frame on its way from the preprocess stage to the inference stage."""

    classifier: Classifier
    prepared: Prepared
    wanted: int
    mode: Mode
    started: float  # perf_counter() when preprocessing began


@dataclass(frozen=True, slots=True)
class Outcome:
    """What OTA's health check sees after each inference."""

    ok: bool
    latency_ms: float
    error: str | None
    model_version: str


class Pipeline:
    """Owns the worker thread, the current classifier and the mode controller."""

    def __init__(
        self,
        grabber: Grabber,
        classifier: Classifier,
        controller: ModeController,
        on_result: Callable[[Result], None],
        *,
        fps_window: float = 3.0,
        on_progress: Callable[[], None] | None = None,
        keep_sessions: int = 1,
    ) -> None:
        self.grabber = grabber
        self._classifier = classifier
        self.controller = controller
        self._on_result = on_result
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self._observers: list[Callable[[Outcome], None]] = []
        self._stop = threading.Event()
        self._jobs: LatestSlot[_Job] = LatestSlot()
        self._threads = (
            threading.Thread(target=self._prepare_loop, name="preprocess", daemon=True),
            threading.Thread(target=self._infer_loop, name="inference", daemon=True),
        )
        self.fps = RateMeter(fps_window)
        self.preprocess_ms = Ewma()
        self.inference_ms = Ewma()
        self.processed = 0
        self.errors = 0
        self.last_error: str | None = None
        self._seq = 0
        self.keep_sessions = keep_sessions
        self._serving = controller.resolution  # what frames are classified at right now
        self._loading: set[tuple[int, int]] = set()  # (id(classifier), resolution) being built
        self._failed: set[tuple[int, int]] = set()
        self.on_resolution_change: Callable[[int], None] | None = None

    # --- control (any thread) ------------------------------------------------------------------------

    @property
    def classifier(self) -> Classifier:
        return self._classifier

    @property
    def resolution(self) -> int:
        """The resolution the mode asks for (frames follow once its session is built)."""
        return self.controller.resolution

    @property
    def mode(self) -> Mode:
        return self.controller.mode

    def set_mode(self, mode: Mode) -> int:
        with self._lock:
            return self.controller.set_mode(mode, time.monotonic())

    def swap(self, classifier: Classifier) -> Classifier:
        """Make ``classifier`` serve from the next frame on; returns the one it replaces."""
        with self._lock:
            old, self._classifier = self._classifier, classifier
            self.controller.set_ladder(classifier.resolutions, time.monotonic())
        log.info("model %s is now serving", classifier.model_ref().version)
        return old

    def latest_frame(self) -> Frame | None:
        frame = self.grabber.slot.peek()
        return None if frame is None else frame.copy()

    def add_observer(self, fn: Callable[[Outcome], None]) -> None:
        with self._lock:
            self._observers.append(fn)

    def remove_observer(self, fn: Callable[[Outcome], None]) -> None:
        with self._lock:
            if fn in self._observers:
                self._observers.remove(fn)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)

    # --- worker ----------------------------------------------------------------------------------------

    def _pick(self, clf: Classifier, wanted: int) -> int:
        """Serve ``wanted`` if its session is ready; otherwise build it in the background and keep
        serving the current resolution meanwhile, so a mode switch never stalls the stream."""
        if wanted not in clf.resolutions:
            wanted = clf.nearest(wanted)
        loaded = clf.loaded
        if wanted in loaded or not loaded:
            return wanted
        key = (id(clf), wanted)
        if key not in self._loading and key not in self._failed:
            self._loading.add(key)
            threading.Thread(target=self._load, args=(clf, wanted, key), name="session-build", daemon=True).start()
        return self._serving_for(clf, loaded)

    def _serving_for(self, clf: Classifier, loaded: frozenset[int]) -> int:
        return self._serving if self._serving in loaded else max(loaded)

    def _load(self, clf: Classifier, resolution: int, key: tuple[int, int]) -> None:
        try:
            clf.load(resolution)
        except InferenceError as exc:
            self._failed.add(key)
            self.last_error = str(exc)
            log.error("cannot switch to %dpx: %s; staying at the current resolution", resolution, exc)
        finally:
            self._loading.discard(key)

    def _prepare_loop(self) -> None:
        import cv2

        cv2.setNumThreads(1)  # OpenCV's own pool would fight ONNX Runtime's threads for the same cores
        frames = self.grabber.slot
        while not self._stop.is_set():
            frame = frames.get(timeout=0.25)
            if frame is None:
                continue
            t0 = time.perf_counter()
            with self._lock:
                clf = self._classifier
                wanted = self.controller.resolution
                mode = self.controller.mode
            try:
                prepared = clf.prepare(frame, self._pick(clf, wanted))
            except InferenceError as exc:
                self._failed_frame(clf, str(exc), t0)
                continue
            self._jobs.put(_Job(clf, prepared, wanted, mode, t0))
            # Back-pressure: the next tensor is prepared only once this one is taken, so the buffer being
            # inferred is never overwritten and stale work is never done.
            while not self._jobs.wait_taken(0.25) and not self._stop.is_set():
                pass

    def _infer_loop(self) -> None:
        while not self._stop.is_set():
            job = self._jobs.get(timeout=0.25)
            if job is not None:
                self._step(job)

    def _failed_frame(self, clf: Classifier, error: str, t0: float) -> None:
        self.errors += 1
        self.last_error = error
        log.warning("inference failed: %s", error)
        with self._lock:
            observers = tuple(self._observers)
        outcome = Outcome(False, (time.perf_counter() - t0) * 1000.0, error, clf.bundle.manifest.version)
        for fn in observers:
            fn(outcome)

    def _step(self, job: _Job) -> None:
        clf, resolution = job.classifier, job.prepared.resolution
        try:
            c = clf.infer(job.prepared)
        except InferenceError as exc:
            self._failed_frame(clf, str(exc), job.started)
            return
        wanted, mode, t0 = job.wanted, job.mode, job.started
        with self._lock:
            observers = tuple(self._observers)
        version = clf.bundle.manifest.version
        if self.keep_sessions < len(clf.loaded) and resolution == wanted:
            clf.release(keep=resolution)  # the previous resolution's session is no longer needed
        now = time.monotonic()
        self.processed += 1
        self.fps.tick(now)
        fps = self.fps.rate(now)
        self.preprocess_ms.add(c.preprocess_ms)
        self.inference_ms.add(c.inference_ms)
        total_ms = (time.perf_counter() - t0) * 1000.0
        self._serving = c.resolution
        self._seq += 1
        self._on_result(Result(self._seq, time.time(), c, round(fps, 2), total_ms, mode, clf.model_ref()))
        for fn in observers:
            fn(Outcome(True, total_ms, None, version))
        if self._on_progress is not None:
            self._on_progress()
        if mode is Mode.AUTO:
            with self._lock:
                switched = self.controller.observe(fps, now)
            if switched is not None:
                log.info("auto mode: %.1f fps, switching to %dpx", fps, switched)
                if self.on_resolution_change is not None:
                    self.on_resolution_change(switched)
