"""``model build --runtime both`` end to end through the CLI: ONNX and TFLite files, the reference set, eval, pack.

GhostNetV2 with random weights at one small resolution keeps it to about a minute; what is checked is the
bundle's shape, that every file is hashed and signed, and that eval and the reference check run each file
through the node's own sessions.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from edge_node.bundle import open_bundle
from edge_node.bundle.archive import pack
from edge_node.bundle.reference import load_reference
from edge_node.cli import main
from edge_node.modelzoo.labels import imagenet_wnids

pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("litert_torch")

from edge_node.modelzoo.calibration import from_skimage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # one build, ~1.5 min; minutes under load
RES = 64


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(bundle, public key, images): built once through the CLI."""
    work = tmp_path_factory.mktemp("litert-build")
    images = work / "images"
    images.mkdir()
    wnids = imagenet_wnids()
    for i, frame in enumerate(from_skimage(count=30, seed=2).frames):
        cv2.imwrite(str(images / f"{wnids[i * 29]}_photo{i}.JPEG"), frame)
    key = work / "release"
    assert main(["model", "keygen", str(key)]) == 0
    out = work / "bundle"
    argv = ["model", "build", "--arch", "ghostnetv2_100", "--weights", "random", "--calib", str(images)]
    argv += ["--precision", "both", "--runtime", "both", "--resolutions", str(RES), "--out", str(out)]
    argv += ["--reference-images", "6", "--reference-gate", "0.5", "--sign", str(key), "--no-progress"]
    assert main(argv) == 0
    return out, key.with_name("release.pub"), images


def _number(value: object) -> float:
    """A metrics value (the manifest keeps them as JSON scalars) as a float."""
    assert isinstance(value, int | float), value
    return float(value)


def test_bundle_lists_files_by_runtime_precision_and_resolution(built: tuple[Path, Path, Path]) -> None:
    out, pub, _ = built
    bundle = open_bundle(out, trusted_keys=[pub], require_signature=True)  # every file hashed and signed
    m = bundle.manifest
    assert sorted((v.runtime, v.precision, v.resolution, v.file, v.layout) for v in m.variants) == [
        ("litert", "fp32", RES, f"model_{RES}_fp32.tflite", "NHWC"),
        ("litert", "int8", RES, f"model_{RES}_int8.tflite", "NHWC"),
        ("onnxruntime", "fp32", RES, f"model_{RES}_fp32.onnx", None),
        ("onnxruntime", "int8", RES, f"model_{RES}_int8.onnx", None),
    ]
    assert m.runtimes() == ["litert", "onnxruntime"] and m.resolutions("int8", "litert") == [RES]
    assert m.layout(m.variant(RES, "int8", "litert")) == "NHWC" and m.preprocess.layout == "NCHW"
    rows = {row["file"]: row for row in m.metrics}
    assert _number(rows[f"model_{RES}_fp32.tflite"]["max_abs_diff_vs_torch"]) <= 1e-3
    assert rows[f"model_{RES}_int8.tflite"]["runtime"] == "litert"
    assert 0.0 <= _number(rows[f"model_{RES}_int8.tflite"]["reference_agreement"]) <= 1.0
    assert m.build.calibration["litert_recipe"] and m.build.calibration["recipe"]
    assert {"litert-torch", "ai-edge-quantizer", "ai-edge-litert"} <= set(m.build.toolchain)


def test_reference_set_is_in_the_bundle_and_small(built: tuple[Path, Path, Path]) -> None:
    out, _, images = built
    bundle = open_bundle(out)
    info = bundle.manifest.reference
    assert info is not None and info.min_agreement == 0.5 and len(info.images) == 6
    assert all(image.file in bundle.manifest.files and (images / image.origin).is_file() for image in info.images)
    size = sum((out / image.file).stat().st_size for image in info.images)
    assert size < 100_000
    reference = load_reference(bundle)
    assert reference is not None and reference.top5[RES].shape == (6, 5)
    side = round(RES / bundle.manifest.preprocess.crop_pct)  # the node's crop of the frame is RES pixels
    assert all(frame.shape == (side, side, 3) for frame in reference.frames)


def test_eval_covers_both_runtimes_and_reports_the_reference_check(
    built: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, images = built
    capsys.readouterr()
    assert main(["model", "eval", str(out), "--images", str(images), "--limit", "6", "--json", "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["runtime"], r["precision"]) for r in rows) == [
        ("litert", "fp32"),
        ("litert", "int8"),
        ("onnxruntime", "fp32"),
        ("onnxruntime", "int8"),
    ]
    for row in rows:
        assert row["latency_ms_median"] > 0
        if row["precision"] == "int8":
            assert row["agreement"] is not None and "reference_agreement" in row


def test_packed_bundle_opens_with_its_reference_images(built: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out, pub, _ = built
    archive = pack(out, tmp_path / "b.tar.gz")
    bundle = open_bundle(archive, trusted_keys=[pub], require_signature=True, unpack_dir=tmp_path)
    reference = load_reference(bundle)
    assert reference is not None and len(reference.frames) == 6
