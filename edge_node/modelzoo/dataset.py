"""A folder of labelled images for ``model train``: its layout, the train/val split and its fingerprint.

Layouts (ImageFolder): ``DIR/<class>/*.jpg``, split per class with a fixed rule, or ``DIR/train/<class>/``
plus ``DIR/val/<class>/`` (``valid/`` and ``validation/`` are accepted too) used as given. Class names are the
folder names in sorted order, so class ``i`` is line ``i`` of the bundle's ``labels.txt``.

The stratified split depends only on each file's path and the seed: a class's files are ordered by
``sha256("<seed>:<class>/<file>")`` and the first ``round(n * val_fraction)`` (at least one) are validation.
Adding photos later moves few old ones across, and ``model eval --split val`` recomputes the same split.
Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from edge_node.errors import DatasetError
from edge_node.modelzoo.images import IMAGE_SUFFIXES, LabelledImage

__all__ = [
    "MIN_IMAGES_ADVISED",
    "VAL_DIRS",
    "Dataset",
    "Sample",
    "SplitRule",
    "load_dataset",
]

log = logging.getLogger(__name__)

VAL_DIRS = ("val", "valid", "validation")
MIN_IMAGES_ADVISED = 20  # per class; fewer still trains, with a warning
# Formats phones and cameras produce that OpenCV cannot decode: named in the error instead of silently skipped.
_UNREADABLE = frozenset({".heic", ".heif", ".avif", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf"})
_IGNORED_DIRS = ("__MACOSX",)


@dataclass(frozen=True, slots=True)
class Sample:
    path: Path
    label: int
    name: str  # POSIX path relative to the dataset root, e.g. "dog/IMG_0042.jpg" or "train/dog/IMG_0042.jpg"


@dataclass(frozen=True, slots=True)
class SplitRule:
    layout: str  # "folders" (train/ and val/ given) or "stratified"
    val_fraction: float = 0.2
    seed: int = 0

    def describe(self) -> dict[str, object]:
        if self.layout == "folders":
            return {"layout": "folders"}
        return {
            "layout": "stratified",
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "rule": "per class, the first max(1, round(n * val_fraction)) files by sha256('<seed>:<class>/<file>')",
        }


@dataclass(frozen=True)
class Dataset:
    root: Path
    classes: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    rule: SplitRule
    warnings: tuple[str, ...] = ()
    _digests: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def counts(self, samples: Sequence[Sample]) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for s in samples:
            counts[self.classes[s.label]] += 1
        return counts

    def held_out(self) -> list[LabelledImage]:
        """The validation images as the evaluator reads them."""
        return [LabelledImage(s.path, s.label) for s in self.val]

    def files_sha256(self) -> str:
        """One hash over every file's name and content: two folders with equal hashes hold the same data."""
        h = hashlib.sha256()
        for s in sorted((*self.train, *self.val), key=lambda s: s.name):
            h.update(f"{s.name}\t{self._digest(s)}\n".encode())
        return h.hexdigest()

    def duplicates(self) -> list[list[str]]:
        """Groups of files with identical bytes (a photo in two classes, or in both train and val)."""
        by_digest: dict[str, list[str]] = defaultdict(list)
        for s in (*self.train, *self.val):
            by_digest[self._digest(s)].append(s.name)
        return sorted(sorted(names) for names in by_digest.values() if len(names) > 1)

    def fingerprint(self) -> dict[str, object]:
        """What the manifest records: the class names, image counts per split and a hash of the files."""
        return {
            "source": self.root.name,
            "classes": list(self.classes),
            "train": self.counts(self.train),
            "val": self.counts(self.val),
            "files": len(self.train) + len(self.val),
            "files_sha256": self.files_sha256(),
            "split": self.rule.describe(),
        }

    def _digest(self, sample: Sample) -> str:
        if sample.name not in self._digests:
            with sample.path.open("rb") as fh:
                self._digests[sample.name] = hashlib.file_digest(fh, "sha256").hexdigest()
        return self._digests[sample.name]


def load_dataset(root: Path, *, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Read ``root`` (either layout), split it and check it can train a classifier; errors say what to fix."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"the validation fraction must be between 0 and 1, got {val_fraction}")
    warnings: list[str] = []
    train_dir = root / "train"
    val_dir = next((root / d for d in VAL_DIRS if (root / d).is_dir()), None)
    if train_dir.is_dir() and val_dir is not None:
        train_files = _class_files(train_dir, warnings)
        val_files = _class_files(val_dir, warnings, min_classes=1)
        unknown = sorted(set(val_files) - set(train_files))
        if unknown:
            raise DatasetError(
                f"{val_dir} has class folder(s) {unknown} that {train_dir} does not have; every validation class "
                "needs training images under the same folder name"
            )
        classes = tuple(sorted(train_files))
        no_val = [c for c in classes if c not in val_files]
        if no_val:
            warnings.append(f"class(es) {no_val} have no validation images: their accuracy cannot be measured")
        train = _samples(root, classes, train_files)
        val = _samples(root, classes, val_files)
        rule = SplitRule("folders")
    else:
        base = train_dir if train_dir.is_dir() else root
        files = _class_files(base, warnings)
        classes = tuple(sorted(files))
        small = [c for c in classes if len(files[c]) < 2]
        if small:
            raise DatasetError(
                f"class(es) {small} have a single image; each class needs at least 2 (one to train on, one to "
                f"validate with), and {MIN_IMAGES_ADVISED}+ to learn anything useful"
            )
        rule = SplitRule("stratified", val_fraction, seed)
        train, val = _stratified(_samples(root, classes, files), rule, prefix="train/" if base == train_dir else "")
    _check_classes(root, classes)
    dataset = Dataset(root=root, classes=classes, train=train, val=val, rule=rule)
    counts = dataset.counts(dataset.train)
    few = sorted(c for c, n in counts.items() if n < MIN_IMAGES_ADVISED)
    if few:
        warnings.append(
            f"class(es) {few} have fewer than {MIN_IMAGES_ADVISED} training images: expect a noisy model; "
            "photograph more examples (different days, light, angles)"
        )
    largest, smallest = max(counts.values()), min(counts.values())
    if smallest and largest / smallest >= 4:
        warnings.append(f"classes are imbalanced ({largest} vs {smallest} training images); the loss is reweighted")
    duplicates = dataset.duplicates()
    if duplicates:
        shown = "; ".join(" = ".join(group) for group in duplicates[:3])
        warnings.append(f"{len(duplicates)} image(s) appear more than once with identical bytes ({shown})")
    return replace(dataset, warnings=tuple(warnings))


def _class_files(base: Path, warnings: list[str], *, min_classes: int = 2) -> dict[str, list[Path]]:
    """{class folder name: image files under it (recursively), sorted}; refuses folders it cannot use."""
    classes: dict[str, list[Path]] = {}
    unreadable: list[Path] = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        if folder.name.startswith(".") or folder.name in _IGNORED_DIRS or folder.name in ("train", *VAL_DIRS):
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        unreadable += [p for p in files if p.suffix.lower() in _UNREADABLE]
        if images:
            classes[folder.name] = images
        elif files:
            warnings.append(f"{folder} holds no images OpenCV can read; ignored")
    loose = [p for p in base.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        warnings.append(f"{len(loose)} image(s) directly in {base} have no class folder and are ignored")
    if unreadable:
        kinds = sorted({p.suffix.lower() for p in unreadable})
        raise DatasetError(
            f"{len(unreadable)} file(s) in {base} are {', '.join(kinds)} (e.g. {unreadable[0]}), which OpenCV cannot "
            "read. Convert them to JPEG first (for HEIC: `heif-convert IN.heic OUT.jpg`, from libheif-examples), or "
            "set the phone camera to 'Most Compatible' (JPEG)"
        )
    if len(classes) < min_classes:
        raise DatasetError(
            f"{base} has {len(classes)} class folder(s) with images; put each class's photos in its own folder, "
            f"e.g. {base}/parcel/*.jpg and {base}/empty/*.jpg (at least two classes)"
        )
    return classes


def _samples(root: Path, classes: Sequence[str], files: dict[str, list[Path]]) -> tuple[Sample, ...]:
    index = {c: i for i, c in enumerate(classes)}
    return tuple(
        Sample(path, index[c], path.relative_to(root).as_posix()) for c in classes for path in files.get(c, [])
    )


def _stratified(
    samples: Sequence[Sample], rule: SplitRule, *, prefix: str
) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """(train, val): per class, the files ranked first by ``_rank`` are validation."""
    train: list[Sample] = []
    val: list[Sample] = []
    for group in _by_class(samples):
        ranked = sorted(group, key=lambda s: _rank(s.name.removeprefix(prefix), rule.seed))
        k = max(1, round(len(ranked) * rule.val_fraction))
        val += ranked[:k]
        train += ranked[k:]
    return tuple(sorted(train, key=_order)), tuple(sorted(val, key=_order))


def _order(sample: Sample) -> tuple[int, str]:
    return sample.label, sample.name


def _by_class(samples: Iterable[Sample]) -> list[list[Sample]]:
    groups: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.label].append(s)
    return [groups[k] for k in sorted(groups)]


def _rank(key: str, seed: int) -> str:
    """Split key of ``<class>/<file>``: the same photos split the same way in any folder, on any machine."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def _check_classes(root: Path, classes: Sequence[str]) -> None:
    bad = [c for c in classes if c != c.strip() or "\n" in c]
    if bad:
        raise DatasetError(
            f"class folder(s) {bad} in {root} start or end with spaces; a node reads labels stripped, so rename them"
        )
