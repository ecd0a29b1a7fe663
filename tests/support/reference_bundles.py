"""Reference sets for the tiny test bundles (tests/support/bundles.py), without torch.

``add_reference`` gives a tiny bundle real JPEG reference frames and the FP32 tiny model's answers (computed
on the decoded JPEGs, as ``model build`` does). ``replace_int8`` swaps the INT8 files for ones from other
weights, with the manifest's hashes updated: a bundle that opens cleanly but whose INT8 files disagree with
FP32, which the node's on-device check must catch.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from edge_node.bundle.manifest import MANIFEST, ReferenceImage, ReferenceInfo, file_digest, read_manifest
from edge_node.bundle.signing import load_private_key, sign_bundle
from edge_node.modelzoo.images import load_bgr
from edge_node.vision.preprocess import Preprocessor
from tests.support.bundles import _seed, tiny_model

__all__ = ["add_reference", "replace_int8"]


def _frames(count: int) -> list[np.ndarray]:
    """Photos of a sort: each a smooth colour field with noise, different mean colours (the tiny model pools)."""
    rng = np.random.default_rng(7)
    frames = []
    for _ in range(count):
        base = rng.integers(0, 256, size=3)
        ramp = np.linspace(-40, 40, 96)[None, :, None]
        frame = np.clip(base[None, None, :] + ramp + rng.normal(0, 8, (72, 96, 3)), 0, 255)
        frames.append(frame.astype(np.uint8))
    return frames


def add_reference(bundle: Path, *, count: int = 16, min_agreement: float = 0.9, key: Path | None = None) -> Path:
    """Add ``reference/*.jpg`` and the manifest's ``reference`` block to a tiny bundle; re-sign with ``key``."""
    manifest, _ = read_manifest(bundle)
    (bundle / "reference").mkdir(exist_ok=True)
    sessions = {}
    for r in manifest.resolutions(manifest.precision):
        fp32 = tiny_model(r, manifest.num_classes, precision="fp32", seed=_seed(manifest.version, r))
        sessions[r] = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    images = []
    for i, frame in enumerate(_frames(count)):
        name = f"reference/ref_{i:03d}.jpg"
        cv2.imwrite(str(bundle / name), frame)
        decoded = load_bgr(bundle / name)  # what the node will see: the JPEG as decoded
        top5 = {}
        for r, session in sessions.items():
            logits = session.run(None, {"input": Preprocessor(manifest.preprocess, r)(decoded)})[0][0]
            top5[r] = [int(c) for c in np.argsort(-logits)[:5]]
        images.append(ReferenceImage(file=name, top5=top5, origin=f"synthetic #{i}"))
    files = dict(manifest.files) | {image.file: file_digest(bundle / image.file) for image in images}
    reference = ReferenceInfo(images=images, min_agreement=min_agreement, source="synthetic colour fields")
    _rewrite(bundle, manifest.model_copy(update={"files": files, "reference": reference}), key)
    return bundle


def replace_int8(bundle: Path, *, seed: int = 12345, key: Path | None = None) -> Path:
    """Overwrite every INT8 file with a model of other weights; the manifest's hashes follow (so it opens)."""
    manifest, _ = read_manifest(bundle)
    files = dict(manifest.files)
    for v in manifest.variants:
        if v.precision == "int8":
            model = tiny_model(v.resolution, manifest.num_classes, precision="int8", seed=seed + v.resolution)
            (bundle / v.file).write_bytes(model.SerializeToString())
            files[v.file] = file_digest(bundle / v.file)
    _rewrite(bundle, manifest.model_copy(update={"files": files}), key)
    return bundle


def _rewrite(bundle: Path, manifest: object, key: Path | None) -> None:
    from edge_node.bundle.manifest import Manifest

    assert isinstance(manifest, Manifest)
    checked = Manifest.model_validate(manifest.model_dump())  # run the validators on the edited copy
    (bundle / MANIFEST).write_bytes(checked.to_bytes())
    (bundle / "manifest.sig").unlink(missing_ok=True)
    if key is not None:
        sign_bundle(bundle, load_private_key(key))
