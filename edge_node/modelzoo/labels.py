"""The committed ImageNet-1k class table: names (the bundles' labels.txt) and wnids (eval ground truth).

Both files are generated once from ``imagenet_classes.tsv`` and committed, so builds never depend on
``../shared``. Line ``i`` of each file is class ``i`` in sorted-wnid order, the output order of timm models.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

__all__ = ["IMAGENET_LABELS", "IMAGENET_WNIDS", "imagenet_labels", "imagenet_wnids", "wnid_index"]

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
