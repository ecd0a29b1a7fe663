"""The bundle's reference set (edge_node.bundle.reference): loading, the agreement gate and old bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_node.bundle import open_bundle
from edge_node.bundle.manifest import read_manifest
from edge_node.bundle.reference import agreement, check_session, load_reference
from edge_node.errors import BundleError, BundleIntegrityError
from edge_node.runtimes import open_session
from edge_node.vision.preprocess import Preprocessor
from tests.support.bundles import make_key, make_tiny_bundle
from tests.support.reference_bundles import add_reference, replace_int8


def test_agreement_is_the_share_of_equal_top1() -> None:
    assert agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert agreement(np.array([5]), np.array([5])) == 1.0
    with pytest.raises(ValueError, match="equally long"):
        agreement([1, 2], [1])
    with pytest.raises(ValueError, match="non-empty"):
        agreement([], [])


def test_bundle_without_reference_set_loads_and_has_none(tiny_bundle: Path) -> None:
    bundle = open_bundle(tiny_bundle)
    assert bundle.manifest.reference is None
    assert load_reference(bundle) is None


def test_reference_set_round_trip_and_a_healthy_int8_file_passes(tmp_path: Path) -> None:
    key = tmp_path / "key"
    pub = make_key(key)
    path = add_reference(make_tiny_bundle(tmp_path / "b", key=key), count=12, min_agreement=0.9, key=key)
    bundle = open_bundle(path, trusted_keys=[pub], require_signature=True)  # images are hashed and signed
    reference = load_reference(bundle)
    assert reference is not None
    assert len(reference.frames) == 12 and reference.min_agreement == 0.9
    assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in reference.frames)
    assert sorted(reference.top5) == [160, 192, 224] and reference.top5[224].shape == (12, 5)
    assert len(set(reference.expected(224).tolist())) > 2  # the frames really tell classes apart
    m = bundle.manifest
    for r in m.resolutions("int8"):
        session = open_session(bundle.model_file(r, "int8"), "onnxruntime", threads=1)
        result = check_session(reference, r, session, Preprocessor(m.preprocess, r))
        assert result.passed and result.agreement >= 0.9, result.describe()
    with pytest.raises(BundleError, match="no FP32 answers at 96px"):
        reference.expected(96)


def test_an_int8_file_that_disagrees_with_fp32_fails_the_gate(tmp_path: Path) -> None:
    path = replace_int8(add_reference(make_tiny_bundle(tmp_path / "b"), count=16))
    bundle = open_bundle(path)  # hashes are valid: only the on-device check can tell
    reference = load_reference(bundle)
    assert reference is not None
    session = open_session(bundle.model_file(224, "int8"), "onnxruntime", threads=1)
    result = check_session(reference, 224, session, Preprocessor(bundle.manifest.preprocess, 224))
    assert not result.passed
    assert result.agreement < 0.9 and len(result.disagreeing) >= 2
    assert "FAILS the reference check at 224px" in result.describe()


def test_a_tampered_reference_image_is_refused(tmp_path: Path) -> None:
    path = add_reference(make_tiny_bundle(tmp_path / "b"), count=4)
    with (path / "reference" / "ref_001.jpg").open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleIntegrityError, match=r"reference/ref_001\.jpg"):
        open_bundle(path)


def test_manifest_refuses_reference_images_that_are_not_hashed_or_lack_a_resolution(tmp_path: Path) -> None:
    path = add_reference(make_tiny_bundle(tmp_path / "b"), count=3)
    raw = json.loads((path / "manifest.json").read_text())
    unhashed = json.loads(json.dumps(raw))
    del unhashed["files"]["reference/ref_002.jpg"]
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    (bad / "manifest.json").write_text(json.dumps(unhashed))
    with pytest.raises(BundleError, match=r"not hashed.*reference/ref_002\.jpg"):
        read_manifest(bad)
    partial = json.loads(json.dumps(raw))
    del partial["reference"]["images"][0]["top5"]["192"]
    (bad / "manifest.json").write_text(json.dumps(partial))
    with pytest.raises(BundleError, match=r"ref_000\.jpg has no FP32 answer at \[192\]"):
        read_manifest(bad)
