"""End to end through the CLI: keygen -> build (GhostNetV2, random init, INT8, signed) -> verify -> eval -> pack.

Then a tampered file, a foreign signature and a missing file must each be refused with a clear error.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import pytest

from edge_node.bundle import open_bundle
from edge_node.cli import main
from edge_node.errors import BundleError
from edge_node.modelzoo.labels import imagenet_wnids

pytest.importorskip("torch")
pytest.importorskip("timm")

from edge_node.modelzoo.build import BuildOptions, build_bundle
from edge_node.modelzoo.calibration import from_folder, from_skimage

pytestmark = pytest.mark.slow
RES = 96


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 labelled JPEGs in the ImageNet-sample naming (<wnid>_<name>.JPEG), made from scikit-image photos."""
    folder = tmp_path_factory.mktemp("images")
    wnids = imagenet_wnids()
    for i, frame in enumerate(from_skimage(count=30, seed=1).frames):
        cv2.imwrite(str(folder / f"{wnids[i * 31]}_photo{i}.JPEG"), frame)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, images: Path) -> tuple[Path, Path]:
    """(bundle dir, private key): built once through the CLI."""
    work = tmp_path_factory.mktemp("build")
    key = work / "keys" / "release"
    assert main(["model", "keygen", str(key)]) == 0
    assert key.stat().st_mode & 0o777 == 0o600
    out = work / "bundle"
    argv = ["model", "build", "--arch", "ghostnetv2_100", "--weights", "random", "--calib", str(images)]
    argv += ["--precision", "both", "--resolutions", str(RES), "--out", str(out), "--version", "0.0.1"]
    assert main([*argv, "--sign", str(key), "--no-progress"]) == 0
    return out, key


def test_build_writes_a_complete_signed_bundle(built: tuple[Path, Path], images: Path) -> None:
    out, key = built
    bundle = open_bundle(out, trusted_keys=[key.with_name("release.pub")], require_signature=True)
    m = bundle.manifest
    assert (m.name, m.version, m.arch, m.precision, m.num_classes) == (
        "ghostnetv2_100",
        "0.0.1",
        "ghostnetv2_100",
        "int8",
        1000,
    )
    assert sorted((v.precision, v.resolution, v.file) for v in m.variants) == [
        ("fp32", RES, f"model_{RES}_fp32.onnx"),
        ("int8", RES, f"model_{RES}_int8.onnx"),
    ]
    references = {name for name in m.files if name.startswith("reference/")}
    assert m.reference is not None and references == {image.file for image in m.reference.images}
    assert set(m.files) - references == {f"model_{RES}_fp32.onnx", f"model_{RES}_int8.onnx", "labels.txt"}
    assert bundle.labels[281] == "tabby"
    assert m.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    assert m.build.weights == "random"
    assert m.serial == int(re.sub(r"\D", "", m.build.created)[:14])  # default serial: the build time, YYYYMMDDHHMMSS
    assert {"torch", "timm", "onnxruntime"} <= set(m.build.toolchain)
    calibration = m.build.calibration
    assert calibration["recipe"]  # what quantize_int8 returned
    names = calibration["images"]
    assert isinstance(names, list) and names and all((images / str(n)).is_file() for n in names)
    by_file = {row["file"]: row for row in m.metrics}
    fp32, int8 = by_file[f"model_{RES}_fp32.onnx"], by_file[f"model_{RES}_int8.onnx"]
    assert _number(fp32["max_abs_diff_vs_torch"]) <= 1e-3
    assert int8["agreement"] is not None and fp32["top1"] is not None
    # the build-time accuracy is measured on images that were not used for calibration
    assert fp32["images"] == 30 - len(names)
    assert _number(int8["size_bytes"]) < _number(fp32["size_bytes"])


def _number(value: object) -> float:
    """A metrics value (the manifest keeps them as JSON scalars) as a float."""
    assert isinstance(value, int | float), value
    return float(value)


def test_verify_accepts_the_bundle_and_its_archive(
    built: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, key = built
    pub = key.with_name("release.pub")
    assert main(["model", "verify", str(out), "--pubkey", str(pub)]) == 0
    assert capsys.readouterr().out.startswith("OK: ghostnetv2_100 0.0.1 signed by key")
    archive = tmp_path / "b.tar.gz"
    assert main(["model", "pack", str(out), str(archive)]) == 0
    assert main(["model", "verify", str(archive), "--pubkey", str(pub)]) == 0


def test_sign_sets_the_serial_of_an_archive(
    built: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, key = built
    archive = tmp_path / "b.tar.gz"
    assert main(["model", "pack", str(out), str(archive)]) == 0
    assert main(["model", "sign", str(archive), "--key", str(key), "--serial", "7"]) == 0
    assert "(ghostnetv2_100 0.0.1, serial 7)" in capsys.readouterr().out
    bundle = open_bundle(archive, trusted_keys=[key.with_name("release.pub")], unpack_dir=tmp_path / "x")
    assert bundle.manifest.serial == 7
    with pytest.raises(SystemExit):  # argparse: "a serial is a whole number from 0 to 2^63-1"
        main(["model", "sign", str(archive), "--key", str(key), "--serial", "-1"])


def _copy(built: tuple[Path, Path], tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(built[0], target)
    return target


def _verify_error(bundle: Path, pub: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["model", "verify", str(bundle), "--pubkey", str(pub)]) == 2
    return capsys.readouterr().err


def test_tampered_file_is_refused(built: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _copy(built, tmp_path)
    target = bundle / f"model_{RES}_int8.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    err = _verify_error(bundle, built[1].with_name("release.pub"), capsys)
    assert f"model_{RES}_int8.onnx does not match its sha256" in err


def test_tampered_manifest_and_foreign_signature_are_refused(
    built: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub = built[1].with_name("release.pub")
    bundle = _copy(built, tmp_path)
    manifest = bundle / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"0.0.1"', b'"0.0.2"'))
    assert "does not verify with any of the 1 trusted key(s)" in _verify_error(bundle, pub, capsys)

    other = tmp_path / "other"
    assert main(["model", "keygen", str(other)]) == 0
    resigned = tmp_path / "resigned"
    shutil.copytree(built[0], resigned)
    assert main(["model", "sign", str(resigned), "--key", str(other)]) == 0
    assert "signed by an unknown key" in _verify_error(resigned, pub, capsys)
    assert main(["model", "verify", str(resigned), "--pubkey", str(pub), "--pubkey", str(other) + ".pub"]) == 0


def test_missing_file_and_missing_signature_are_refused(
    built: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub = built[1].with_name("release.pub")
    bundle = _copy(built, tmp_path)
    (bundle / "labels.txt").unlink()
    assert "bundle file labels.txt is missing" in _verify_error(bundle, pub, capsys)
    unsigned = tmp_path / "unsigned"
    shutil.copytree(built[0], unsigned)
    (unsigned / "manifest.sig").unlink()
    assert "is not signed" in _verify_error(unsigned, pub, capsys)


def test_sign_refuses_a_bundle_whose_files_do_not_match(built: tuple[Path, Path], tmp_path: Path) -> None:
    bundle = _copy(built, tmp_path)
    (bundle / "labels.txt").write_text("tampered\n")
    assert main(["model", "sign", str(bundle), "--key", str(built[1])]) == 2


def test_eval_json_rows(built: tuple[Path, Path], images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    argv = ["model", "eval", str(built[0]), "--images", str(images), "--json", "--exclude-calibration"]
    assert main([*argv, "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["precision"], r["resolution"]) for r in rows] == [("fp32", RES), ("int8", RES)]
    required = {"precision", "resolution", "top1", "top5", "agreement", "latency_ms_median", "latency_ms_p90"}
    for row in rows:
        assert required <= set(row)
        assert 0.0 <= row["top1"] <= row["top5"] <= 1.0
        assert 0.0 < row["latency_ms_median"] <= row["latency_ms_p90"]
    assert rows[0]["agreement"] is None and 0.0 <= rows[1]["agreement"] <= 1.0
    calibrated = open_bundle(built[0]).manifest.build.calibration["images"]
    assert isinstance(calibrated, list)
    assert rows[0]["images"] == 30 - len(calibrated)
    assert main(["model", "eval", str(built[0]), "--images", str(images), "--limit", "3", "--no-progress"]) == 0
    assert "ghostnetv2_100 0.0.1 on 3 images" in capsys.readouterr().out


def test_failed_build_leaves_nothing_behind(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    options = BuildOptions(arch="ghostnetv2_100", resolutions=(64,), precision="fp32", tolerance=-1.0, progress=False)
    with pytest.raises(BundleError, match="differs from PyTorch"):
        build_bundle(options, from_folder(images), out)
    assert list(tmp_path.iterdir()) == []


def test_build_refuses_an_existing_output(images: Path, tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "keep.txt").write_text("x")
    with pytest.raises(BundleError, match="already exists"):
        build_bundle(BuildOptions(progress=False), from_folder(images), tmp_path / "bundle")
