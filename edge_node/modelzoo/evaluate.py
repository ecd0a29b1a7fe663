"""Accuracy, FP32/INT8 agreement and latency of a bundle's model files (every runtime) on labelled images.

Every image is decoded once and preprocessed once per resolution and layout by the node's own Preprocessor;
all files of that resolution then run on the same tensor, one after another, with the same thread count and
through the node's own sessions (``edge_node.runtimes.open_session``), so their latencies are comparable.
INT8 files are compared with the FP32 file of the same runtime and resolution, or any FP32 file at that
resolution when their runtime has none.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_node.bundle import Bundle
from edge_node.bundle.manifest import Layout, Preprocess
from edge_node.bundle.reference import ReferenceCheck, ReferenceSet, check_session
from edge_node.errors import BundleError
from edge_node.modelzoo.classmetrics import balanced_accuracy, confusion_matrix
from edge_node.modelzoo.images import LabelledImage, list_images, load_bgr
from edge_node.modelzoo.progress import step_progress
from edge_node.runtimes import Runtime, open_session
from edge_node.vision.preprocess import Preprocessor

__all__ = [
    "MAX_CONFUSION_CLASSES",
    "ModelFile",
    "bundle_files",
    "calibration_names",
    "evaluate",
    "image_key",
    "reference_checks",
    "select_images",
    "topk_accuracy",
]

MAX_CONFUSION_CLASSES = 50  # rows carry a confusion matrix up to this many classes (not ImageNet's 1000)
WARMUP_RUNS = 3
LATENCY_ROUNDS = 5
LATENCY_RUNS = 20


@dataclass(frozen=True, slots=True)
class ModelFile:
    precision: str
    resolution: int
    path: Path
    runtime: Runtime = "onnxruntime"
    layout: Layout | None = None  # None: the bundle's preprocess layout


def topk_accuracy(top: npt.NDArray[np.int64], labels: npt.NDArray[np.int64], k: int) -> float:
    """Share of rows whose label is among the first ``k`` columns of ``top`` (classes sorted by score)."""
    return float(np.mean(np.any(top[:, :k] == labels[:, None], axis=1)))


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def evaluate(
    files: Sequence[ModelFile],
    images: Sequence[LabelledImage],
    spec: Preprocess,
    *,
    threads: int = 2,
    progress: bool = True,
    frame_side: int | None = None,
) -> list[dict[str, object]]:
    """One row per file: top-1/top-5 (labelled images only), agreement with FP32 and latency.

    Labelled rows also carry ``balanced_accuracy`` and, up to ``MAX_CONFUSION_CLASSES`` classes, the
    ``confusion`` matrix (``[true][predicted]`` counts). Top-5 is left out (None) for 5 classes or fewer, where
    it is always 100 %. ``frame_side`` shrinks large photos as ``load_bgr`` describes.
    """
    if not images:
        raise BundleError("no images to evaluate on")
    sessions = {f: open_session(f.path, f.runtime, threads=threads) for f in files}
    keys = {f: (f.resolution, f.layout or spec.layout) for f in files}
    by_input = {k: [f for f in files if keys[f] == k] for k in sorted(set(keys.values()), key=lambda k: (-k[0], k[1]))}
    preprocessors = {k: Preprocessor(spec, k[0], layout=k[1]) for k in by_input}
    blank = np.zeros((64, 64, 3), np.uint8)
    for f, sess in sessions.items():
        for _ in range(WARMUP_RUNS):
            sess.run(preprocessors[keys[f]](blank))
    top5: dict[ModelFile, list[npt.NDArray[np.int64]]] = {f: [] for f in files}
    classes: dict[ModelFile, int] = {}
    latency: dict[ModelFile, list[float]] = {f: [] for f in files}
    last: dict[tuple[int, Layout], npt.NDArray[np.float32] | npt.NDArray[np.uint8]] = {}
    with step_progress(progress) as bar:
        task = bar.add_task(f"evaluating {len(files)} file(s)", total=len(images))
        for image in images:
            frame = load_bgr(image.path, frame_side=frame_side)
            for key, group in by_input.items():
                tensor = preprocessors[key](frame)
                last[key] = tensor.copy()
                for f in group:
                    out = sessions[f].run(tensor)
                    classes[f] = out.shape[-1]
                    top5[f].append(np.argsort(-out[0])[:5])
            bar.advance(task)
        # Latency is timed apart from decoding, back to back as in the node, and interleaved across files
        # so that machine load affects every file alike.
        timing = bar.add_task("timing", total=LATENCY_ROUNDS)
        for _ in range(LATENCY_ROUNDS):
            for f in files:
                tensor = last[keys[f]]
                for _ in range(LATENCY_RUNS):
                    start = time.perf_counter()
                    sessions[f].run(tensor)
                    latency[f].append((time.perf_counter() - start) * 1000.0)
            bar.advance(timing)
    labelled = np.array([im.label is not None for im in images])
    labels = np.array([im.label if im.label is not None else -1 for im in images], dtype=np.int64)
    rows: list[dict[str, object]] = []
    for f in files:
        top = np.stack(top5[f])
        fp32 = _fp32_reference(f, files)
        agreement = None
        if fp32 is not None:
            agreement = float(np.mean(top[:, 0] == np.stack(top5[fp32])[:, 0]))
        has_labels = bool(labelled.any())
        row: dict[str, object] = {
            "runtime": f.runtime,
            "precision": f.precision,
            "resolution": f.resolution,
            "file": f.path.name,
            "size_bytes": f.path.stat().st_size,
            "images": len(images),
            "labelled": int(labelled.sum()),
            "top1": topk_accuracy(top[labelled], labels[labelled], 1) if has_labels else None,
            "top5": topk_accuracy(top[labelled], labels[labelled], 5) if has_labels and classes[f] > 5 else None,
            "agreement": agreement,
            "latency_ms_median": statistics.median(latency[f]),
            "latency_ms_p90": _percentile(latency[f], 90),
            "threads": threads,
        }
        if has_labels:
            row.update(_per_class(top[labelled, 0], labels[labelled], classes[f]))
        rows.append(row)
    return sorted(rows, key=lambda row: (-int(str(row["resolution"])), str(row["runtime"]), str(row["precision"])))


def _fp32_reference(f: ModelFile, files: Sequence[ModelFile]) -> ModelFile | None:
    """The FP32 file an INT8 file is compared with: same runtime if there is one, else any, at its resolution."""
    if f.precision == "fp32":
        return None
    same_size = [g for g in files if g.precision == "fp32" and g.resolution == f.resolution]
    return next((g for g in same_size if g.runtime == f.runtime), same_size[0] if same_size else None)


def _per_class(predicted: npt.NDArray[np.int64], truth: npt.NDArray[np.int64], num_classes: int) -> dict[str, object]:
    if int(truth.max()) >= num_classes:
        raise BundleError(
            f"the images are labelled with class {int(truth.max())} but the model has {num_classes} outputs: "
            "are these images for another bundle?"
        )
    confusion = confusion_matrix(truth, predicted, num_classes)
    out: dict[str, object] = {"balanced_accuracy": balanced_accuracy(confusion)}
    if num_classes <= MAX_CONFUSION_CLASSES:
        out["confusion"] = confusion.tolist()
    return out


def bundle_files(bundle: Bundle) -> list[ModelFile]:
    return [
        ModelFile(v.precision, v.resolution, bundle.path / v.file, v.runtime, v.layout)
        for v in sorted(bundle.manifest.variants, key=lambda v: (-v.resolution, v.runtime, v.precision))
    ]


def calibration_names(bundle: Bundle) -> set[str]:
    """Images the bundle was calibrated on (recorded at build time): file names, or ``<class>/<file>``."""
    names = bundle.manifest.build.calibration.get("images", [])
    return {str(n) for n in names} if isinstance(names, list) else set()


def image_key(path: Path) -> str:
    """``<folder>/<file>``: how trained bundles record calibration images (phone file names repeat across classes)."""
    return "/".join(path.parts[-2:])


def select_images(
    folder: Path, *, exclude: Collection[str] = (), limit: int | None = None, table: dict[str, int] | None = None
) -> list[LabelledImage]:
    """The folder's images minus ``exclude`` (by file name or ``image_key``), the first ``limit`` of them.

    ``table`` labels them (``labels.label_table``); default: ImageNet wnids.
    """
    images = [
        im for im in list_images(folder, table) if im.path.name not in exclude and image_key(im.path) not in exclude
    ]
    if not images:
        raise BundleError(f"no images left in {folder} after excluding the {len(exclude)} calibration images")
    return images[:limit] if limit else images


def reference_checks(
    files: Sequence[ModelFile], reference: ReferenceSet, spec: Preprocess, *, threads: int = 2
) -> dict[ModelFile, ReferenceCheck]:
    """Every INT8 file run on the bundle's reference set as the node does it, on this machine's CPU."""
    results = {}
    for f in files:
        if f.precision != "int8" or f.resolution not in reference.top5:
            continue
        session = open_session(f.path, f.runtime, threads=threads)
        preprocess = Preprocessor(spec, f.resolution, layout=f.layout)
        results[f] = check_session(reference, f.resolution, session, preprocess, file=f.path.name)
    return results
