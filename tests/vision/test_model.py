from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_node.bundle import open_bundle
from edge_node.config import ModelConfig
from edge_node.errors import InferenceError
from edge_node.vision.loading import load, select_model
from edge_node.vision.model import Model, softmax_top_k
from tests.support.bundles import make_tiny_bundle

FRAME = np.random.default_rng(3).integers(0, 256, (480, 640, 3), dtype=np.uint8)


def test_softmax_top_k_is_sorted_and_normalised() -> None:
    logits = np.array([0.0, 3.0, 1.0, 2.0, -1.0], np.float32)
    idx, probs = softmax_top_k(logits, 3)
    assert idx.tolist() == [1, 3, 2]
    full = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(probs, full[[1, 3, 2]], rtol=1e-6)


def test_classifies_at_every_resolution_with_real_ort_sessions(tiny_bundle: Path) -> None:
    model = Model(open_bundle(tiny_bundle), precision="int8", workers=2, threads=1, top_k=3)
    assert model.resolutions == [224, 192, 160]
    for r in model.resolutions:
        variant = model.build(r)
        variant.check(FRAME)
        assert len(variant.sessions) == 2
        tensor = variant.buffers.acquire(1.0)
        assert tensor is not None
        ms = variant.prepare(FRAME, tensor)
        for worker in (0, 1):
            c = variant.infer(worker, tensor, ms)
            assert c.resolution == r and len(c.top_k) == 3
            assert c.best.label == f"class_{c.best.class_id:03d}"
            assert 0 < c.best.confidence <= 1 and c.inference_ms > 0 and c.preprocess_ms > 0
        variant.buffers.release(tensor)
    assert model.nearest(200) == 192  # an unknown resolution maps to the nearest


def test_buffer_pool_lends_each_buffer_to_one_holder_at_a_time(tiny_bundle: Path) -> None:
    variant = Model(open_bundle(tiny_bundle), workers=1).build(160)
    a, b = variant.buffers.acquire(0.1), variant.buffers.acquire(0.1)
    assert a is not None and b is not None and a is not b
    assert variant.buffers.acquire(0.05) is None  # one per worker plus the one being prepared: all lent
    variant.buffers.release(a)
    assert variant.buffers.acquire(0.05) is a


def test_missing_precision_falls_back_to_what_the_bundle_has(tiny_bundle: Path) -> None:
    model, _ = select_model(open_bundle(tiny_bundle), ModelConfig(precision="fp32", threads=1), resolution=224)
    assert model.info.precision == "int8"


def test_threads_are_shared_among_workers(tiny_bundle: Path) -> None:
    model, choice = select_model(open_bundle(tiny_bundle), ModelConfig(threads=4, workers=2), resolution=224)
    assert (model.workers, model.threads) == (2, 2) and not choice.measured  # nothing left to measure


def test_a_file_that_is_not_onnx_is_refused_with_its_name(tmp_path: Path) -> None:
    bundle = open_bundle(make_tiny_bundle(tmp_path / "b", broken="not_onnx"))
    with pytest.raises(InferenceError, match=r"cannot load tiny_int8_224\.onnx"):
        Model(bundle).build(224)


def test_load_checks_every_resolution_but_keeps_only_what_serves(tiny_bundle: Path) -> None:
    model = Model(open_bundle(tiny_bundle))
    loaded = load(model, check=[160, 224, 192], keep=1, frame=FRAME)
    assert list(loaded.variants) == [160]


@pytest.mark.parametrize("broken", ["nan", "shape"])
def test_checks_catch_models_that_load_but_misbehave(tmp_path: Path, broken: str) -> None:
    model = Model(open_bundle(make_tiny_bundle(tmp_path / "b", broken=broken)))
    with pytest.raises(InferenceError, match=r"non-finite|output shape"):
        load(model, check=model.resolutions, keep=1, frame=FRAME)
