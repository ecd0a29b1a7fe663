"""``edge-node model eval`` and the per-class results that ``build`` and ``train`` print as well.

For a bundle of its own classes the images are labelled by folder name (``<class>/*.jpg``), and
``--split val`` picks the photos the bundle was validated on, by the split rule its manifest records.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge_node.bundle import Bundle, open_bundle
from edge_node.bundle.reference import load_reference
from edge_node.errors import BundleError
from edge_node.modelzoo.evaluate import bundle_files, calibration_names, evaluate, reference_checks, select_images
from edge_node.modelzoo.images import LabelledImage
from edge_node.modelzoo.labels import label_table
from edge_node.modelzoo.progress import stderr
from edge_node.modelzoo.report import plot_confusion, print_confusion, print_per_class, print_rows

__all__ = ["MAX_TABLE_CLASSES", "print_bundle_metrics", "print_classes", "run_eval", "split_images"]

MAX_TABLE_CLASSES = 30  # per-class figures are printed unasked up to this many classes


def run_eval(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="ghostpi-eval-") as tmp:  # where a .tar.gz is unpacked
        bundle = open_bundle(args.bundle, unpack_dir=Path(tmp))
        table = label_table(bundle.labels)
        if args.split == "all":
            exclude = calibration_names(bundle) if args.exclude_calibration else set()
            images = select_images(args.images, exclude=exclude, limit=args.limit, table=table)
        else:
            images = split_images(bundle, args.images, args.split, table)[: args.limit or None]
        _note_unlabelled(images, bundle.labels)
        frame_side = args.frame_side or bundle.manifest.build.dataset.get("frame_side")
        files = bundle_files(bundle)
        rows = evaluate(
            files,
            images,
            bundle.manifest.preprocess,
            threads=args.threads,
            progress=not args.no_progress,
            frame_side=int(str(frame_side)) if frame_side else None,
        )
        reference = load_reference(bundle)
        if reference is not None:  # the node's on-device check, on this machine's CPU
            checks = reference_checks(files, reference, bundle.manifest.preprocess, threads=args.threads)
            by_name = {f.path.name: check for f, check in checks.items()}
            for row in rows:
                if row["file"] in by_name:
                    row["reference_agreement"] = by_name[str(row["file"])].agreement
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_rows(rows, title=f"{bundle.manifest.name} {bundle.manifest.version} on {len(images)} images")
    print_classes(bundle, rows, force=args.per_class, plot=args.plot, text=not args.json)
    return 0


def split_images(bundle: Bundle, folder: Path, split: str, table: dict[str, int]) -> list[LabelledImage]:
    """The photos of ``folder`` in the bundle's training or validation split, by its recorded rule."""
    from edge_node.modelzoo.dataset import load_dataset

    recorded = bundle.manifest.build.dataset
    rule = recorded.get("split")
    if not isinstance(rule, dict):
        raise BundleError(
            f"--split {split} needs a bundle made by 'edge-node model train' (its manifest records the split); "
            f"{bundle.manifest.name} {bundle.manifest.version} has none. Evaluate a folder of held-out photos instead"
        )
    dataset = load_dataset(folder, val_fraction=float(rule.get("val_fraction", 0.2)), seed=int(rule.get("seed", 0)))
    if dataset.files_sha256() != recorded.get("files_sha256"):
        stderr.print(
            f"[yellow]warning:[/] {folder} is not the folder this bundle was trained on (the hash of its files "
            f"differs); the {split} split is recomputed by the same rule, so some photos may have been trained on"
        )
    samples = dataset.val if split == "val" else dataset.train
    return [LabelledImage(s.path, table.get(dataset.classes[s.label])) for s in samples]


def print_bundle_metrics(out: Path) -> None:
    """The build-time metrics table and, for a bundle of few classes, the default file's per-class figures."""
    bundle = open_bundle(out)
    rows = [dict(row) for row in bundle.manifest.metrics]
    print_rows(rows, title=f"{out} (build-time metrics on held-out images)")
    print_classes(bundle, rows, force=False, plot=None)


def print_classes(
    bundle: Bundle, rows: list[dict[str, object]], *, force: bool, plot: Path | None, text: bool = True
) -> None:
    """Per-class table and confusion matrix of the file the node runs by default; optionally a PNG of it."""
    m = bundle.manifest
    measured = [r for r in rows if r.get("precision") == m.precision and r.get("confusion") is not None]
    if not measured:
        if plot or force:
            raise BundleError(
                "no image was labelled with one of the bundle's classes (folders named after its labels), or the "
                "bundle has too many classes for a confusion matrix: nothing to tabulate"
            )
        return
    if not (force or plot or len(bundle.labels) <= MAX_TABLE_CLASSES):
        return
    row = max(measured, key=lambda r: int(str(r["resolution"])))
    confusion = np.asarray(row["confusion"], dtype=np.int64)
    what = f"{row['file']} ({row['precision']}, {row['resolution']}px) on {int(confusion.sum())} labelled images"
    if text and (force or len(bundle.labels) <= MAX_TABLE_CLASSES):
        print_per_class(bundle.labels, confusion, title=f"per class: {what}")
        print_confusion(bundle.labels, confusion, title=f"confusion matrix: {what}")
    if plot:
        path = plot_confusion(bundle.labels, confusion, plot, title=f"{m.name} {m.version}: {what}")
        stderr.print(f"confusion matrix drawn to {path}")


def _note_unlabelled(images: list[LabelledImage], labels: tuple[str, ...]) -> None:
    unlabelled = [im for im in images if im.label is None]
    if unlabelled and len(labels) <= MAX_TABLE_CLASSES:
        folders = sorted({im.path.parent.name for im in unlabelled})
        stderr.print(
            f"[yellow]note:[/] {len(unlabelled)} of {len(images)} images are not in a folder named after one of the "
            f"bundle's classes ({', '.join(labels)}), so they count for agreement and latency only "
            f"(folders: {', '.join(folders[:5])})"
        )
