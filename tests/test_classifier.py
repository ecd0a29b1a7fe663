from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_node.bundle import open_bundle
from edge_node.errors import InferenceError
from edge_node.vision.classifier import Classifier, softmax_top_k
from tests.bundles import make_tiny_bundle

FRAME = np.random.default_rng(3).integers(0, 256, (480, 640, 3), dtype=np.uint8)


def test_softmax_top_k_is_sorted_and_normalised() -> None:
    logits = np.array([0.0, 3.0, 1.0, 2.0, -1.0], np.float32)
    idx, probs = softmax_top_k(logits, 3)
    assert idx.tolist() == [1, 3, 2]
    full = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(probs, full[[1, 3, 2]], rtol=1e-6)


def test_classifies_at_every_resolution_with_real_ort_sessions(tiny_bundle: Path) -> None:
    clf = Classifier(open_bundle(tiny_bundle), precision="int8", threads=1, top_k=3)
    assert clf.resolutions == [224, 192, 160]
    clf.warmup(FRAME)
    for r in clf.resolutions:
        c = clf.classify(FRAME, r)
        assert c.resolution == r and len(c.top_k) == 3
        assert c.label == c.top_k[0].label == f"class_{c.class_id:03d}"
        assert 0 < c.confidence <= 1 and c.inference_ms > 0 and c.preprocess_ms > 0
    assert clf.classify(FRAME, 200).resolution == 192  # an unknown resolution maps to the nearest


def test_missing_precision_falls_back_to_what_the_bundle_has(tiny_bundle: Path) -> None:
    clf = Classifier(open_bundle(tiny_bundle), precision="fp32", threads=1)
    assert clf.precision == "int8" and clf.model_ref().precision == "int8"


def test_a_file_that_is_not_onnx_is_refused_with_its_name(tmp_path: Path) -> None:
    bundle = open_bundle(make_tiny_bundle(tmp_path / "b", broken="not_onnx"))
    with pytest.raises(InferenceError, match=r"cannot load tiny_int8_224\.onnx"):
        Classifier(bundle, threads=1).warmup(FRAME)


def test_sessions_are_built_on_demand_and_released(tiny_bundle: Path) -> None:
    clf = Classifier(open_bundle(tiny_bundle), threads=1)
    assert clf.loaded == frozenset()
    clf.warmup(FRAME, resolutions=[160])
    assert clf.loaded == {160}
    clf.classify(FRAME, 224)
    assert clf.loaded == {160, 224}
    clf.release(keep=224)
    assert clf.loaded == {224}


@pytest.mark.parametrize("broken", ["nan", "shape"])
def test_warmup_catches_models_that_load_but_misbehave(tmp_path: Path, broken: str) -> None:
    clf = Classifier(open_bundle(make_tiny_bundle(tmp_path / "b", broken=broken)), threads=1)
    with pytest.raises(InferenceError, match="warm-up"):
        clf.warmup(FRAME)
