"""Accuracy, FP32/INT8 agreement and latency of a bundle's ONNX files on labelled images.

Every image is decoded once and preprocessed once per resolution by the node's own Preprocessor; all files
of that resolution then run on the same tensor, one after another, with the same ORT thread count, so their
latencies are measured under the same conditions.
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
from edge_node.bundle.manifest import Preprocess
from edge_node.errors import BundleError
from edge_node.modelzoo.classmetrics import balanced_accuracy, confusion_matrix
from edge_node.modelzoo.images import LabelledImage, list_images, load_bgr
from edge_node.modelzoo.progress import step_progress
from edge_node.modelzoo.runtime import session
from edge_node.vision.preprocess import Preprocessor

__all__ = [
    "MAX_CONFUSION_CLASSES",
    "ModelFile",
    "bundle_files",
    "calibration_names",
    "evaluate",
    "image_key",
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
    sessions = {f: session(f.path, threads=threads) for f in files}
    inputs = {f: sess.get_inputs()[0].name for f, sess in sessions.items()}
    by_resolution = {r: [f for f in files if f.resolution == r] for r in sorted({f.resolution for f in files})}
    preprocessors = {r: Preprocessor(spec, r) for r in by_resolution}
    for f, sess in sessions.items():
        for _ in range(WARMUP_RUNS):
            sess.run(None, {inputs[f]: np.zeros((1, 3, f.resolution, f.resolution), np.float32)})
    top5: dict[ModelFile, list[npt.NDArray[np.int64]]] = {f: [] for f in files}
    classes: dict[ModelFile, int] = {}
    latency: dict[ModelFile, list[float]] = {f: [] for f in files}
    last: dict[int, npt.NDArray[np.float32] | npt.NDArray[np.uint8]] = {}
    with step_progress(progress) as bar:
        task = bar.add_task(f"evaluating {len(files)} file(s)", total=len(images))
        for image in images:
            frame = load_bgr(image.path, frame_side=frame_side)
            for r, group in by_resolution.items():
                tensor = preprocessors[r](frame)
                last[r] = tensor.copy()
                for f in group:
                    out = sessions[f].run(None, {inputs[f]: tensor})[0]
                    classes[f] = out.shape[-1]
                    top5[f].append(np.argsort(-out[0])[:5])
            bar.advance(task)
        # Latency is timed apart from decoding, back to back as in the node, and interleaved across files
        # so that machine load affects every file alike.
        timing = bar.add_task("timing", total=LATENCY_ROUNDS)
        for _ in range(LATENCY_ROUNDS):
            for f in files:
                feed = {inputs[f]: last[f.resolution]}
                for _ in range(LATENCY_RUNS):
                    start = time.perf_counter()
                    sessions[f].run(None, feed)
                    latency[f].append((time.perf_counter() - start) * 1000.0)
            bar.advance(timing)
    labelled = np.array([im.label is not None for im in images])
    labels = np.array([im.label if im.label is not None else -1 for im in images], dtype=np.int64)
    rows: list[dict[str, object]] = []
    for f in files:
        top = np.stack(top5[f])
        fp32 = next((g for g in files if g.precision == "fp32" and g.resolution == f.resolution), None)
        agreement = None
        if f.precision != "fp32" and fp32 is not None:
            agreement = float(np.mean(top[:, 0] == np.stack(top5[fp32])[:, 0]))
        has_labels = bool(labelled.any())
        row: dict[str, object] = {
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
    return sorted(rows, key=lambda row: (-int(str(row["resolution"])), str(row["precision"])))


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
        ModelFile(v.precision, v.resolution, bundle.path / v.file)
        for v in sorted(bundle.manifest.variants, key=lambda v: (-v.resolution, v.precision))
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
