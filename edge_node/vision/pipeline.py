"""The frame path: newest frame → inference workers (N threads, each preprocesses its frame) → outputs in order.

The capture thread fills a one-frame slot; a free worker takes whatever is newest, so a slow model never builds
a backlog, prepares it and runs it. Preprocessing in the worker, not in a thread of its own, saves a hand-off
and a wake-up per frame and keeps one more Python thread off the cores the runtime's pool needs, at the price
of no overlap between one frame's preprocessing and the previous frame's inference in a single worker; with
several workers, frames are still prepared in parallel. Each job holds the
:class:`~edge_node.vision.model.Variant` it was prepared on and a buffer lent by that variant, so a mode switch
or a model swap can never pull a session from under a running frame. Outputs (a :class:`Result` or a
:class:`Failure` per frame) leave in frame order, whichever worker finished first.

Sessions for another resolution are built by one long-lived builder thread while frames keep flowing at the
old resolution; which variants stay loaded, what to build and what to let go is decided by
:mod:`edge_node.vision.variants`. What the pipeline lets go of is returned to the OS once its last frame is
done (:mod:`edge_node.memory`). Every loop survives any exception: it is counted, reported and the loop goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from edge_node import memory
from edge_node.capture.base import Frame
from edge_node.runtimes import Tensor
from edge_node.slot import LatestSlot
from edge_node.vision.meters import Ewma, RateMeter
from edge_node.vision.model import Classification, Model, ModelInfo, Variant
from edge_node.vision.modes import ModeController
from edge_node.vision.variants import Loaded, VariantCache
from edge_node.wire import Mode

if TYPE_CHECKING:
    from edge_node.vision.choice import Choice

__all__ = ["Failure", "Listener", "Loaded", "Output", "Pipeline", "PipelineSnapshot", "Result", "WorkerLoad"]

log = logging.getLogger(__name__)

POLL = 0.25  # seconds a blocked thread waits before it looks at its stop flag again


@dataclass(frozen=True, slots=True)
class Result:
    """One classified frame, with everything a Prediction message needs."""

    seq: int
    ts: float
    classification: Classification
    fps: float
    total_ms: float
    mode: Mode
    model: ModelInfo
    worker: int
    frame: Frame | None = None  # the camera frame it was classified from (read-only; the watch rules' snapshots)


@dataclass(frozen=True, slots=True)
class Failure:
    """A frame that could not be classified (``seq`` set), or a resolution that could not be loaded."""

    stage: Literal["prepare", "infer", "load"]
    error: str
    model: ModelInfo
    resolution: int
    seq: int | None = None


Output = Result | Failure


class Listener(Protocol):
    """Where the pipeline reports; called from its threads, so implementations only hand things over."""

    def on_output(self, item: Output) -> None:
        """Each frame's Result or Failure, in frame order; also a Failure for a resolution that failed to load."""

    def on_change(self) -> None:
        """The serving model or the resolution the mode asks for changed (a swap, an auto-mode step)."""


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """One inference worker: seconds spent inferring since start, frames done, and how long its current frame
    has been running (None when idle)."""

    busy_s: float
    frames: int
    running_for_s: float | None


@dataclass(frozen=True, slots=True)
class PipelineSnapshot:
    """Everything the heartbeat and the supervisor need, read at once."""

    fps: float
    processed: int
    failed: int
    inference_ms: float
    preprocess_ms: float
    serving: int | None  # resolution of the last classified frame
    resolution: int  # what the mode asks for
    mode: Mode
    model: ModelInfo
    workers: tuple[WorkerLoad, ...]
    restarts: int
    last_error: str | None
    choice: Choice | None = None  # the serving Loaded's choice


@dataclass(frozen=True, slots=True)
class _Job:
    seq: int
    variant: Variant
    tensor: Tensor
    preprocess_ms: float
    mode: Mode
    started: float  # perf_counter() when preprocessing began
    frame: Frame | None = None  # the frame itself, carried to the Result (a reference: frames are never written)


@dataclass(slots=True)
class _Done:
    job: _Job
    worker: int
    classification: Classification | None
    error: str | None


class _WorkerStats:
    """Written by its worker thread only; read by anyone (plain attribute reads are atomic)."""

    __slots__ = ("busy_s", "frames", "since")

    def __init__(self) -> None:
        self.busy_s = 0.0
        self.frames = 0
        self.since: float | None = None  # monotonic start of the frame being inferred


class _Generation:
    """One set of worker threads. A restart stops it and starts another; a thread stuck in a runtime call is
    left behind, and whatever it finishes later is dropped because its generation is over."""

    def __init__(self, workers: int) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.stats = tuple(_WorkerStats() for _ in range(workers))


class Pipeline:
    """Owns the inference and builder threads, the serving model's loaded variants and the mode."""

    def __init__(
        self,
        frames: LatestSlot[Frame],
        loaded: Loaded,
        controller: ModeController,
        listener: Listener,
        *,
        keep: int = 1,
        fps_window: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._frames = frames
        self._variants = VariantCache(loaded, keep=keep)
        self.controller = controller
        self._listener = listener
        self._clock = clock
        self._workers = loaded.model.workers
        self._lock = threading.Lock()  # the variant cache (the serving model, its variants, builds) and the mode
        self._emit_lock = threading.Lock()  # frame numbering, reordering and the figures derived from outputs
        self._gen = _Generation(self._workers)
        # Guarded by _emit_lock:
        self._seq = 0
        self._next_emit = 1
        self._pending: dict[int, _Done | Failure] = {}
        self.fps = RateMeter(fps_window)
        self._inference_ms = Ewma()
        self._preprocess_ms = Ewma()
        self._processed = 0
        self._failed_frames = 0
        self._serving: int | None = None
        self._last_error: str | None = None
        self._restarts = 0

    # --- control (any thread) ------------------------------------------------------------------------

    @property
    def model(self) -> Model:
        return self._variants.loaded.model

    @property
    def resolution(self) -> int:
        """The resolution the mode asks for (frames follow once its variant is built)."""
        return self.controller.resolution

    @property
    def mode(self) -> Mode:
        return self.controller.mode

    def set_mode(self, mode: Mode) -> int:
        with self._lock:
            self._variants.forget_failures()  # an operator's switch retries a resolution that failed to load before
            resolution = self.controller.set_mode(mode, self._clock())
        return resolution

    def swap(self, loaded: Loaded) -> Loaded:
        """Serve ``loaded`` from the next frame on. Returns what served until now: the caller owns it and either
        swaps it back or hands it to :meth:`retire`."""
        if loaded.model.workers != self._workers:
            raise ValueError(
                f"the new model has {loaded.model.workers} workers' sessions, the pipeline runs {self._workers}"
            )
        with self._lock:
            old = self._variants.swap(loaded)
            self.controller.set_ladder(loaded.model.resolutions, self._clock())
            self._variants.evict(self.controller.resolution, self._serving)
        log.info(
            "model %s %s (%s) is now serving",
            loaded.model.info.name,
            loaded.model.info.version,
            loaded.model.info.runtime,
        )
        self._notify_change()
        return old

    def retire(self, loaded: Loaded) -> None:
        """Let go of a model that no longer serves; its memory goes back to the OS after its last frame."""
        with self._lock:
            self._variants.retire_all(loaded)

    def latest_frame(self) -> Frame | None:
        """A copy of the newest camera frame, for warm-ups and checks."""
        frame = self._frames.peek()
        return None if frame is None else frame.copy()

    def snapshot(self) -> PipelineSnapshot:
        now = self._clock()
        gen = self._gen
        with self._lock:
            loaded, resolution, mode = self._variants.loaded, self.controller.resolution, self.controller.mode
        with self._emit_lock:
            fps = self.fps.rate(now)
            processed, failed = self._processed, self._failed_frames
            inference_ms, preprocess_ms = self._inference_ms.value, self._preprocess_ms.value
            serving, restarts, last_error = self._serving, self._restarts, self._last_error
        workers = tuple(
            WorkerLoad(s.busy_s, s.frames, None if (since := s.since) is None else now - since) for s in gen.stats
        )
        return PipelineSnapshot(
            fps=fps,
            processed=processed,
            failed=failed,
            inference_ms=inference_ms,
            preprocess_ms=preprocess_ms,
            serving=serving,
            resolution=resolution,
            mode=mode,
            model=loaded.model.info,
            workers=workers,
            restarts=restarts,
            last_error=last_error,
            choice=loaded.choice,
        )

    def start(self) -> None:
        self._start(self._gen)

    def stop(self, timeout: float = 5.0) -> None:
        self._end(self._gen, timeout)
        with self._lock:
            self._variants.retire_all(self._variants.loaded)

    def restart(self, join_timeout: float = 2.0) -> None:
        """Stop the worker threads (leaving a stuck one behind), drop every loaded variant, and start afresh:
        the node's answer to a pipeline that stopped producing while the camera still delivers."""
        old = self._gen
        self._end(old, join_timeout)
        with self._lock:
            self._variants.retire_all(self._variants.loaded)
            self._variants.reset_builds()
        new = _Generation(self._workers)
        with self._emit_lock:
            self._gen = new
            self._pending.clear()
            self._next_emit = self._seq + 1  # frames of the old generation are never emitted
            self._restarts += 1
        log.warning("pipeline restarted (restart %d)", self._restarts)
        self._start(new)

    # --- threads ---------------------------------------------------------------------------------------

    def _start(self, gen: _Generation) -> None:
        targets: list[tuple[str, Callable[..., None], tuple[object, ...]]] = [
            (f"inference-{i}", self._work_loop, (i,)) for i in range(self._workers)
        ]
        targets.append(("session-builder", self._build_loop, ()))
        for name, target, args in targets:
            thread = threading.Thread(target=self._guard, args=(gen, target, *args), name=name, daemon=True)
            gen.threads.append(thread)
            thread.start()

    def _end(self, gen: _Generation, timeout: float) -> None:
        gen.stop.set()
        self._variants.wake()  # the builder sees its stop flag
        deadline = time.monotonic() + timeout
        for thread in gen.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.error("thread %s did not stop within %.1fs; leaving it behind", thread.name, timeout)

    def _guard(self, gen: _Generation, loop: Callable[..., None], *args: object) -> None:
        """Run one step of ``loop`` after another until the generation ends; no exception ends the thread."""
        while not gen.stop.is_set():
            try:
                loop(gen, *args)
            except Exception as exc:  # a bug of ours: count it, report it, go on
                log.exception("%s: unexpected error; continuing", threading.current_thread().name)
                with self._emit_lock:
                    self._last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.05)  # never spin on a persistent fault

    def _prepare_one(self, gen: _Generation) -> _Job | None:
        """The newest frame, numbered and prepared on the variant the mode asks for; None when there is none to
        run (no frame within POLL, nothing loaded, or it failed: then its Failure is already on its way)."""
        frame = self._frames.get(timeout=POLL)
        if frame is None:
            return None
        t0 = time.perf_counter()
        with self._lock:
            mode = self.controller.mode
            variant = self._variants.pick(self.controller.resolution, self._serving)
        if variant is None:
            return None  # nothing is loaded (after a restart, or every build failed): the frame is dropped
        tensor = variant.buffers.acquire(POLL)
        if tensor is None:
            return None  # every buffer is in flight (a worker left behind by a restart): this frame is stale anyway
        with self._emit_lock:
            self._seq += 1
            seq = self._seq
        # From here on, the frame's seq must be completed exactly once, or output stalls behind it.
        try:
            ms = variant.prepare(frame, tensor)
        except Exception as exc:
            variant.buffers.release(tensor)
            self._complete(gen, seq, Failure("prepare", _describe(exc), variant.model.info, variant.resolution, seq))
            return None
        return _Job(seq, variant, tensor, ms, mode, t0, frame)

    def _work_loop(self, gen: _Generation, index: int) -> None:
        import cv2

        cv2.setNumThreads(1)  # OpenCV's own pool would fight the runtimes' threads for the same cores
        stats = gen.stats[index]
        while not gen.stop.is_set():
            job = self._prepare_one(gen)
            if job is None:
                continue
            started = time.perf_counter()
            stats.since = self._clock()
            classification, error = None, None
            try:
                classification = job.variant.infer(index, job.tensor, job.preprocess_ms)
            except Exception as exc:  # InferenceError, or anything a runtime throws: the frame fails, not the thread
                error = _describe(exc)
            finally:
                job.variant.buffers.release(job.tensor)
                stats.busy_s += time.perf_counter() - started
                stats.frames += 1
                stats.since = None
            self._complete(gen, job.seq, _Done(job, index, classification, error))
            del job  # the variant must not outlive its last frame in a local variable

    def _build_loop(self, gen: _Generation) -> None:
        while not gen.stop.is_set():
            request = self._variants.next_build(timeout=0.5)
            if request is None:  # idle (or woken to stop): a good moment to hand retired memory back
                self._trim_retired()
                continue
            model, resolution = request
            try:
                variant = model.build(resolution)
                variant.check(self.latest_frame())
            except Exception as exc:
                error = _describe(exc)
                log.error("cannot serve %dpx with %r: %s; staying at the current resolution", resolution, model, error)
                with self._lock:
                    self._variants.build_failed(model, resolution, error)
                with self._emit_lock:
                    self._last_error = error
                self._safe_call(self._listener.on_output, Failure("load", error, model.info, resolution))
                continue
            with self._lock:
                stopping = gen.stop.is_set()
                wanted, serving = self.controller.resolution, self._serving
                self._variants.built(model, resolution, variant, wanted=wanted, serving=serving, stopping=stopping)
            del variant

    # --- helpers (callers hold the locks named) --------------------------------------------------------------

    def _trim_retired(self) -> None:
        """Once no frame holds a retired variant any more, give its memory back (builder thread)."""
        with self._lock:
            if not self._variants.release_retired():
                return
        memory.trim()

    def _complete(self, gen: _Generation, seq: int, done: _Done | Failure) -> None:
        """Record a frame's outcome and emit every outcome that is now next in frame order."""
        with self._emit_lock:
            if gen is not self._gen or seq < self._next_emit:
                return  # a frame of a generation that was restarted away
            self._pending[seq] = done
            # A worker stuck on one frame must not hold every later frame back: give up on it.
            if len(self._pending) > 4 * self._workers + 4 and self._next_emit not in self._pending:
                lost = self._next_emit
                self._pending[lost] = Failure(
                    "infer",
                    "no result: the worker running this frame is stuck",
                    self._variants.loaded.model.info,
                    self.controller.resolution,
                    lost,
                )
            while self._next_emit in self._pending:
                item = self._pending.pop(self._next_emit)
                self._next_emit += 1
                self._emit(item)

    def _emit(self, item: _Done | Failure) -> None:
        """Turn one outcome into what the listener gets, and keep the figures (with ``_emit_lock``)."""
        if isinstance(item, Failure):
            self._failed_frames += 1
            self._last_error = item.error
            self._safe_call(self._listener.on_output, item)
            return
        job, c = item.job, item.classification
        if c is None:
            self._failed_frames += 1
            self._last_error = item.error
            self._safe_call(
                self._listener.on_output,
                Failure(
                    "infer", item.error or "inference failed", job.variant.model.info, job.variant.resolution, job.seq
                ),
            )
            return
        now = self._clock()
        self._processed += 1
        self.fps.tick(now)
        fps = self.fps.rate(now)
        self._inference_ms.add(c.inference_ms)
        self._preprocess_ms.add(c.preprocess_ms)
        self._serving = c.resolution
        total_ms = (time.perf_counter() - job.started) * 1000.0
        result = Result(
            job.seq, time.time(), c, round(fps, 2), total_ms, job.mode, job.variant.model.info, item.worker, job.frame
        )
        self._safe_call(self._listener.on_output, result)
        with self._lock:  # every mode: the controller learns each resolution's cost for when auto is chosen
            switched = self.controller.observe(now, fps=fps, resolution=c.resolution, inference_ms=c.inference_ms)
        if switched is not None:
            log.info("auto mode: %.1f fps at %dpx, switching to %dpx", fps, c.resolution, switched)
            self._notify_change()

    def _notify_change(self) -> None:
        self._safe_call(self._listener.on_change)

    @staticmethod
    def _safe_call(fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("pipeline listener failed")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text[:300] if text else type(exc).__name__
