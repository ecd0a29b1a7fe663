"""Results a person can read: the per-file metrics table, per-class figures and the confusion matrix.

Tables are rich text on stdout (the results; progress stays on stderr). ``plot_confusion`` draws the matrix
as a PNG with OpenCV, already a runtime dependency, so no plotting library is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from edge_node.errors import BundleError
from edge_node.modelzoo.classmetrics import balanced_accuracy, class_stats
from edge_node.modelzoo.dataset import Dataset
from edge_node.modelzoo.progress import stderr

__all__ = [
    "MAX_PLOT_CLASSES",
    "plot_confusion",
    "print_confusion",
    "print_dataset",
    "print_per_class",
    "print_rows",
    "results_console",
]

MAX_PLOT_CLASSES = 50
_HEADER_CHARS = 10  # confusion matrix column headers are cut to this many characters


def results_console() -> Console:
    console = Console()
    if not console.is_terminal:  # piped or captured: rich would squeeze the table into 80 columns
        console = Console(width=170)
    return console


def _pct(value: object) -> str:
    return "-" if value is None else f"{float(str(value)) * 100:.2f}%"


def _num(value: object, fmt: str) -> str:
    return "-" if value is None else format(float(str(value)), fmt)


def print_rows(rows: Sequence[dict[str, object]], *, title: str) -> None:
    """One line per model file: accuracy, agreement (with FP32 and on the reference set), latency, size, export
    check."""
    table = Table(title=title)
    columns = (
        "file", "runtime", "precision", "res", "top-1", "balanced", "top-5", "agree", "ref",
        "median ms", "p90 ms", "MB", "max|Δ|",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("file", "runtime", "precision") else "right")
    for row in rows:
        table.add_row(
            str(row.get("file", "")),
            str(row.get("runtime", "onnxruntime")),
            str(row.get("precision", "")),
            str(row.get("resolution", "")),
            _pct(row.get("top1")),
            _pct(row.get("balanced_accuracy")),
            _pct(row.get("top5")),
            _pct(row.get("agreement")),
            _pct(row.get("reference_agreement")),
            _num(row.get("latency_ms_median"), ".1f"),
            _num(row.get("latency_ms_p90"), ".1f"),
            _num(int(str(row.get("size_bytes", 0))) / 1e6, ".2f"),
            _num(row.get("max_abs_diff_vs_torch"), ".2g"),
        )
    results_console().print(table)


def print_dataset(dataset: Dataset) -> None:
    """Classes and image counts per split, then any warnings, on stderr (before training starts)."""
    table = Table(title=f"{dataset.root}: {len(dataset.classes)} classes, {dataset.rule.layout} split")
    for column in ("id", "class", "train", "val"):
        table.add_column(column, justify="left" if column == "class" else "right")
    train, val = dataset.counts(dataset.train), dataset.counts(dataset.val)
    for i, c in enumerate(dataset.classes):
        table.add_row(str(i), c, str(train[c]), str(val[c]))
    stderr.print(table)
    for warning in dataset.warnings:
        stderr.print(f"[yellow]warning:[/] {warning}")


def print_per_class(labels: Sequence[str], confusion: npt.NDArray[np.int64], *, title: str) -> None:
    """Per class: images, correct, recall, precision, F1, and the class it is most often mistaken for."""
    table = Table(title=title)
    for column in ("id", "class", "images", "correct", "recall", "precision", "F1", "most confused with"):
        table.add_column(column, justify="left" if column in ("class", "most confused with") else "right")
    for i, (label, stats) in enumerate(zip(labels, class_stats(confusion), strict=True)):
        row = confusion[i].copy()
        row[i] = 0
        worst = int(row.argmax())
        confused = f"{labels[worst]} ({int(row[worst])})" if row[worst] else ""
        table.add_row(
            str(i),
            label,
            str(stats.support),
            str(stats.correct),
            _pct(stats.recall),
            _pct(stats.precision),
            _pct(stats.f1),
            confused,
        )
    total = int(confusion.sum())
    top1 = float(np.trace(confusion)) / total if total else None
    table.caption = f"top-1 {_pct(top1)}, balanced accuracy (mean recall) {_pct(balanced_accuracy(confusion))}"
    results_console().print(table)


def print_confusion(labels: Sequence[str], confusion: npt.NDArray[np.int64], *, title: str) -> None:
    """The matrix as text: a row per true class, a column per predicted class, the diagonal in green."""
    table = Table(title=title, caption="rows: true class, columns: predicted class")
    table.add_column("true \\ predicted", justify="left")
    for label in labels:
        table.add_column(label[:_HEADER_CHARS], justify="right")
    for i, label in enumerate(labels):
        cells = [
            (f"[green]{n}[/]" if j == i else (f"[red]{n}[/]" if n else "[dim]·[/]"))
            for j, n in enumerate(int(v) for v in confusion[i])
        ]
        table.add_row(label, *cells)
    results_console().print(table)


def plot_confusion(labels: Sequence[str], confusion: npt.NDArray[np.int64], path: Path, *, title: str) -> Path:
    """Write the matrix as a PNG: cells shaded by the share of their row, counts printed in them."""
    n = len(labels)
    if n > MAX_PLOT_CLASSES:
        raise BundleError(f"a confusion plot of {n} classes would be unreadable (at most {MAX_PLOT_CLASSES})")
    names = [_ascii(label)[:24] for label in labels]
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    cell = max(34, 8 + max(cv2.getTextSize(str(int(confusion.max())), font, scale, thick)[0][0], 0))
    text_w = max(cv2.getTextSize(name, font, scale, thick)[0][0] for name in names) + 16
    top, left = text_w + 60, text_w + 30
    height, width = top + n * cell + 20, max(left + n * cell + 20, cv2.getTextSize(title, font, 0.55, 1)[0][0] + 20)
    img = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(img, _ascii(title), (10, 22), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    rows = confusion.sum(axis=1, keepdims=True).astype(np.float64)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, np.float64), where=rows > 0)
    for i in range(n):
        y = top + i * cell
        cv2.putText(img, names[i], (10, y + cell // 2 + 5), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
        for j in range(n):
            x = left + j * cell
            shade = round(255 * (1.0 - float(share[i, j])))
            colour = (255, shade, shade) if i == j else (shade, shade, 255)  # BGR: blue diagonal, red errors
            cv2.rectangle(img, (x, y), (x + cell - 1, y + cell - 1), colour, -1)
            cv2.rectangle(img, (x, y), (x + cell - 1, y + cell - 1), (200, 200, 200), 1)
            count = int(confusion[i, j])
            if count:
                text = str(count)
                (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
                ink = (255, 255, 255) if share[i, j] > 0.6 else (0, 0, 0)
                org = (x + (cell - tw) // 2, y + (cell + th) // 2)
                cv2.putText(img, text, org, font, scale, ink, thick, cv2.LINE_AA)
    # Column headers: written horizontally on a strip, then turned 90 degrees.
    strip = np.full((cell * n, text_w, 3), 255, np.uint8)
    for j, name in enumerate(names):
        cv2.putText(strip, name, (6, j * cell + cell // 2 + 5), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    img[top - text_w - 4 : top - 4, left : left + n * cell] = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    cv2.putText(img, "predicted", (left, top - text_w - 10), font, 0.5, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.putText(img, "true", (10, top - 10), font, 0.5, (80, 80, 80), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise BundleError(f"cannot write {path}; use a .png file name in a writable folder")
    return path


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only."""
    return text.encode("ascii", "replace").decode()
