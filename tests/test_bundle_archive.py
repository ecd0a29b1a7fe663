"""The bundle format's own guarantees: safe unpacking, strict manifests, label count, signature handling."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from edge_node.bundle import open_bundle
from edge_node.bundle.archive import pack, unpack
from edge_node.bundle.manifest import MANIFEST, BuildInfo, Manifest, Preprocess, Variant, file_digest
from edge_node.bundle.signing import generate_keypair, load_private_key, sign_bundle
from edge_node.errors import BundleError, BundleIntegrityError, SignatureError


def _bundle(directory: Path, *, labels: int = 3) -> Path:
    directory.mkdir()
    (directory / "model_64_int8.onnx").write_bytes(b"not really onnx")
    (directory / "labels.txt").write_text("".join(f"class{i}\n" for i in range(labels)))
    manifest = Manifest(
        name="tiny",
        version="1.0",
        arch="ghostnetv2_100",
        precision="int8",
        num_classes=3,
        preprocess=Preprocess(),
        variants=[Variant(resolution=64, precision="int8", file="model_64_int8.onnx")],
        files={n: file_digest(directory / n) for n in ("model_64_int8.onnx", "labels.txt")},
        build=BuildInfo(created="2026-01-01T00:00:00+00:00"),
    )
    (directory / MANIFEST).write_bytes(manifest.to_bytes())
    return directory


def _tar(path: Path, members: list[tarfile.TarInfo], data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil", "a/../../evil", "a\\b"])
def test_unsafe_paths_are_refused(tmp_path: Path, name: str) -> None:
    archive = _tar(tmp_path / "a.tar.gz", [tarfile.TarInfo(name)])
    with pytest.raises(BundleError, match="unsafe path"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_links_and_oversized_archives_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("manifest.json")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(BundleError, match="link or device"):
        unpack(_tar(tmp_path / "l.tar.gz", [link]), tmp_path / "l")
    many = [tarfile.TarInfo(f"f{i}") for i in range(5)]
    with pytest.raises(BundleError, match="more than 4 files"):
        unpack(_tar(tmp_path / "m.tar.gz", many), tmp_path / "m", max_files=4)
    with pytest.raises(BundleError, match="more than 3 bytes"):
        unpack(_tar(tmp_path / "s.tar.gz", [tarfile.TarInfo("big")], b"1234"), tmp_path / "s", max_total=3)
    (tmp_path / "junk.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(BundleError, match="not a readable"):
        unpack(tmp_path / "junk.tar.gz", tmp_path / "j")


def test_an_archive_made_with_tar_czf_dash_C_dir_dot_opens(tmp_path: Path) -> None:
    """``tar czf b.tar.gz -C dir .`` stores "." and "./name" entries: the usual way, and safe."""
    import subprocess

    bundle = _bundle(tmp_path / "b")
    archive = tmp_path / "b.tar.gz"
    subprocess.run(["tar", "czf", str(archive), "-C", str(bundle), "."], check=True)
    with tarfile.open(archive) as tar:
        assert "." in tar.getnames() and "./manifest.json" in tar.getnames()
    opened = open_bundle(archive, unpack_dir=tmp_path / "unpacked")
    assert opened.labels == ("class0", "class1", "class2")
    for name in ("./../evil", "./a/../../evil"):  # a "./" prefix does not make ".." safe
        with pytest.raises(BundleError, match="unsafe path"):
            unpack(_tar(tmp_path / "e.tar.gz", [tarfile.TarInfo(name)]), tmp_path / "e")


def test_pack_and_open_archive_round_trip(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "b")
    archive = pack(bundle, tmp_path / "b.tar.gz")
    opened = open_bundle(archive, unpack_dir=tmp_path / "unpacked")
    assert opened.manifest.name == "tiny" and opened.labels == ("class0", "class1", "class2")
    assert opened.model_file(64, "int8").read_bytes() == b"not really onnx"
    with pytest.raises(BundleError, match="no onnxruntime fp32 model at 64px"):
        opened.model_file(64, "fp32")


def test_label_count_must_match(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "b", labels=4)
    with pytest.raises(BundleError, match="has 4 labels"):
        open_bundle(bundle)


def test_manifest_is_strict(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "b")
    text = (bundle / MANIFEST).read_text()
    (bundle / MANIFEST).write_text(text.replace('"model_64_int8.onnx"', '"../model_64_int8.onnx"', 1))
    with pytest.raises(BundleError, match="invalid"):
        open_bundle(bundle)
    (bundle / MANIFEST).write_text(text.replace('"name": "tiny"', '"name": "tiny", "surprise": 1'))
    with pytest.raises(BundleError, match="invalid"):
        open_bundle(bundle)
    (bundle / MANIFEST).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        open_bundle(bundle)


def test_signature_required_and_checked(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "b")
    pub = generate_keypair(tmp_path / "k")
    with pytest.raises(SignatureError, match="is not signed"):
        open_bundle(bundle, trusted_keys=[pub], require_signature=True)
    with pytest.raises(BundleError, match="no trusted keys"):
        open_bundle(bundle, require_signature=True)
    sign_bundle(bundle, load_private_key(tmp_path / "k"))
    assert open_bundle(bundle, trusted_keys=[pub], require_signature=True).signed_by
    with pytest.raises(SignatureError, match="refusing to overwrite"):
        generate_keypair(tmp_path / "k")
    (bundle / "model_64_int8.onnx").write_bytes(b"not really onnX")
    with pytest.raises(BundleIntegrityError, match="does not match its sha256"):
        open_bundle(bundle, trusted_keys=[pub], require_signature=True)
