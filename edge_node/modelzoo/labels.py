"""The committed ImageNet-1k class table: names (the bundles' labels.txt) and wnids (eval ground truth).

Both files are generated once from ``imagenet_classes.tsv`` and committed, so builds never depend on
``../shared``. Line ``i`` of each file is class ``i`` in sorted-wnid order, the output order of timm models.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from edge_node.errors import BundleError

__all__ = [
    "IMAGENET_LABELS",
    "IMAGENET_WNIDS",
    "imagenet_labels",
    "imagenet_wnids",
    "label_table",
    "read_labels",
    "wnid_index",
]

IMAGENET_LABELS = Path(__file__).with_name("imagenet_labels.txt")
IMAGENET_WNIDS = Path(__file__).with_name("imagenet_wnids.txt")


def _lines(path: Path) -> tuple[str, ...]:
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


@cache
def imagenet_labels() -> tuple[str, ...]:
    return _lines(IMAGENET_LABELS)


@cache
def imagenet_wnids() -> tuple[str, ...]:
    return _lines(IMAGENET_WNIDS)


@cache
def wnid_index() -> dict[str, int]:
    """``n01440764`` -> 0, and so on for the 1000 classes."""
    return {wnid: i for i, wnid in enumerate(imagenet_wnids())}


def label_table(labels: Sequence[str]) -> dict[str, int]:
    """How image folders name the classes of a bundle with ``labels``: ImageNet's by wnid, others by label."""
    if tuple(labels) == imagenet_labels():
        return dict(wnid_index())
    return {label: i for i, label in enumerate(labels)}


def read_labels(path: Path) -> tuple[str, ...]:
    """A labels file (one class name per line, line i = class i), checked so that a node reads it the same way."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read labels file {path}: {exc}") from exc
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise BundleError(
            f"{path} has blank line(s) {blank[:5]} between labels; a node skips blank lines, which would shift "
            "every class after them. Remove them (line i must name output i)"
        )
    labels = tuple(line.strip() for line in lines)
    if len(labels) < 2:
        raise BundleError(f"{path} lists {len(labels)} label(s); a classifier needs at least 2 (one per line)")
    duplicates = sorted(label for label, n in Counter(labels).items() if n > 1)
    if duplicates:
        raise BundleError(f"{path} lists {duplicates[:5]} more than once; every class needs its own name")
    return labels
