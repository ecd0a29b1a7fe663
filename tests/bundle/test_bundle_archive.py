"""The bundle format's own guarantees: archives are verified before anything is written and streamed with every
resource bounded, manifests are strict, label counts match, and trusted keys always require a signature."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from edge_node.bundle import extract_bundle, open_bundle
from edge_node.bundle.archive import HEAD_BYTES, extract, pack
from edge_node.bundle.manifest import (
    MANIFEST,
    SIGNATURE,
    BuildInfo,
    Manifest,
    Preprocess,
    Variant,
    file_digest,
    read_manifest,
)
from edge_node.bundle.signing import generate_keypair, load_private_key, sign_bundle
from edge_node.bundle.tarstream import MAX_EXTENDED
from edge_node.errors import BundleError, BundleIntegrityError, SignatureError
from edge_node.modelzoo.sign import sign_path
from tests.support.archives import Entry, write_archive
from tests.support.bundles import make_keys
from tests.support.fswatch import watch_writes

MODEL = b"not really onnx"


def _bundle(
    directory: Path, *, labels: int = 3, key: Path | None = None, extra: dict[str, bytes] | None = None
) -> Path:
    """A minimal bundle folder; ``extra`` files are listed in the manifest too."""
    directory.mkdir()
    (directory / "model_64_int8.onnx").write_bytes(MODEL)
    (directory / "labels.txt").write_text("".join(f"class{i}\n" for i in range(labels)))
    for name, data in (extra or {}).items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    manifest = Manifest(
        name="tiny",
        version="1.0",
        arch="ghostnetv2_100",
        precision="int8",
        num_classes=3,
        preprocess=Preprocess(),
        variants=[Variant(resolution=64, precision="int8", file="model_64_int8.onnx")],
        files={n: file_digest(directory / n) for n in ("model_64_int8.onnx", "labels.txt", *(extra or {}))},
        build=BuildInfo(created="2026-01-01T00:00:00+00:00"),
    )
    (directory / MANIFEST).write_bytes(manifest.to_bytes())
    if key is not None:
        sign_bundle(directory, load_private_key(key))
    return directory


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(trusted private key, its public key, an untrusted private key)."""
    return make_keys(tmp_path_factory.mktemp("keys"))


def _entries(bundle: Path, *names: str) -> list[Entry]:
    return [(name, (bundle / name).read_bytes()) for name in names]


SIGNED_ORDER = (MANIFEST, SIGNATURE, "labels.txt", "model_64_int8.onnx")


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil", "a/../../evil", "a\\b", "./../evil", "./a/../../evil"])
def test_unsafe_paths_are_refused(tmp_path: Path, name: str) -> None:
    archive = write_archive(tmp_path / "a.tar.gz", [(name, b"x")])
    with pytest.raises(BundleError, match="unsafe path"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()


def test_links_junk_and_oversized_archives_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo(MANIFEST)
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with tarfile.open(tmp_path / "l.tar.gz", "w:gz") as tar:
        tar.addfile(link)
    with pytest.raises(BundleError, match="link or device"):
        extract(tmp_path / "l.tar.gz", tmp_path / "l")
    (tmp_path / "junk.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(BundleError, match="not a readable"):
        extract(tmp_path / "junk.tar.gz", tmp_path / "j")
    bundle = _bundle(tmp_path / "b")
    with pytest.raises(BundleError, match=r"unpacks to \d+ bytes, more than 10;"):
        extract(pack(bundle, tmp_path / "b.tar.gz"), tmp_path / "s", max_total=10)
    assert not (tmp_path / "s").exists()


def test_every_header_counts_against_the_cap_directories_included(tmp_path: Path) -> None:
    """The old reader skipped directories without counting them (and tarfile kept every header in memory)."""
    bundle = _bundle(tmp_path / "b")
    folders: list[Entry] = [(f"d{i}/", None) for i in range(10)]
    archive = write_archive(tmp_path / "a.tar.gz", [*folders, *_entries(bundle, MANIFEST, "labels.txt")])
    with pytest.raises(BundleError, match="more than 8 entries"):
        extract(archive, tmp_path / "out", max_members=8)
    assert not (tmp_path / "out").exists()


def test_an_archive_made_with_tar_opens(tmp_path: Path) -> None:
    """``tar czf b.tar.gz --sort=name -C dir .`` stores "." and "./name" entries, with labels.txt sorted before
    manifest.json (as `model pack` did before manifest-first order): small files ahead of the manifest are held
    in memory until it is verified."""
    bundle = _bundle(tmp_path / "b")
    archive = tmp_path / "b.tar.gz"
    subprocess.run(["tar", "czf", str(archive), "--sort=name", "-C", str(bundle), "."], check=True)
    with tarfile.open(archive) as tar:
        assert tar.getnames()[:3] == [".", "./labels.txt", "./manifest.json"]
    opened = open_bundle(archive, unpack_dir=tmp_path / "unpacked")
    assert opened.labels == ("class0", "class1", "class2")


def test_a_large_file_ahead_of_the_manifest_is_refused_with_what_to_do(tmp_path: Path) -> None:
    big = b"\0" * (HEAD_BYTES + 1)
    bundle = _bundle(tmp_path / "b", extra={"aaa.bin": big})
    archive = write_archive(tmp_path / "a.tar.gz", _entries(bundle, "aaa.bin", MANIFEST, "labels.txt"))
    with pytest.raises(BundleError, match=r"does not start with manifest\.json .* repack .* 'edge-node model pack'"):
        extract(archive, tmp_path / "out")


def test_pack_writes_the_manifest_first_and_only_listed_files(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    bundle = _bundle(tmp_path / "b", key=keys[0], extra={"reference/ref_000.jpg": b"jpeg"})
    (bundle / ".DS_Store").write_bytes(b"stray")
    archive = pack(bundle, tmp_path / "b.tar.gz")
    with tarfile.open(archive) as tar:
        assert tar.getnames() == [*SIGNED_ORDER, "reference/ref_000.jpg"]
    assert pack(bundle, tmp_path / "again.tar.gz").read_bytes() == archive.read_bytes()  # reproducible
    opened = open_bundle(archive, trusted_keys=[keys[1]], unpack_dir=tmp_path / "unpacked")
    assert opened.signed_by and opened.model_file(64, "int8").read_bytes() == MODEL
    assert (opened.path / "reference" / "ref_000.jpg").read_bytes() == b"jpeg"
    assert not (opened.path / ".DS_Store").exists()
    with pytest.raises(BundleError, match="no onnxruntime fp32 model at 64px"):
        opened.model_file(64, "fp32")


def test_nothing_is_written_before_the_signature_verifies(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    rogue = pack(_bundle(tmp_path / "b", key=keys[2]), tmp_path / "rogue.tar.gz")
    with watch_writes(tmp_path) as writes, pytest.raises(SignatureError, match="does not verify"):
        extract_bundle(rogue, tmp_path / "out", trusted_keys=[keys[1]])
    assert writes == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("change", ["unlisted", "size", "hash", "twice", "missing"])
def test_files_must_be_listed_once_at_their_size_and_hash(
    tmp_path: Path, keys: tuple[Path, Path, Path], change: str
) -> None:
    bundle = _bundle(tmp_path / "b", key=keys[0])
    entries = _entries(bundle, *SIGNED_ORDER)
    sizes: dict[str, int] = {}
    if change == "unlisted":
        entries.insert(2, ("extra.bin", b"surprise"))
    elif change == "size":
        sizes["model_64_int8.onnx"] = 10 << 20  # a header that declares 10 MiB for a listed 15-byte file
    elif change == "hash":
        entries[3] = ("model_64_int8.onnx", MODEL.upper())
    elif change == "twice":
        entries.append(entries[2])
    else:
        entries.pop()
    archive = write_archive(tmp_path / "a.tar.gz", entries, sizes=sizes)
    match = {
        "unlisted": "'extra.bin' is not listed in the manifest",
        "size": "model_64_int8.onnx has 10485760 bytes in a.tar.gz, the manifest says 15",
        "hash": "model_64_int8.onnx does not match its sha256",
        "twice": "has labels.txt twice",
        "missing": "model_64_int8.onnx is missing from a.tar.gz",
    }[change]
    with watch_writes(tmp_path / "out") as writes, pytest.raises(BundleError, match=match):
        extract(archive, tmp_path / "out", trusted_keys=[keys[1]])
    assert not (tmp_path / "out").exists()
    if change in ("unlisted", "size"):  # refused from the header: the entry's data was never written
        assert not any(w.endswith(("extra.bin", "model_64_int8.onnx")) for w in writes), writes


def test_trusted_keys_always_require_a_signature(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    """With keys configured, deleting manifest.sig used to skip the check unless a signature was also required
    (EDGE_OTA__ALLOW_UNSIGNED_MODELS turned that off)."""
    unsigned = _bundle(tmp_path / "b")
    with pytest.raises(SignatureError, match="is not signed"):
        open_bundle(unsigned, trusted_keys=[keys[1]], require_signature=False)
    with pytest.raises(SignatureError, match="is not signed"):
        extract(pack(unsigned, tmp_path / "b.tar.gz"), tmp_path / "out", trusted_keys=[keys[1]])
    with pytest.raises(BundleError, match="no trusted keys"):
        open_bundle(unsigned, require_signature=True)
    assert open_bundle(unsigned).signed_by is None  # a local bundle without keys: nothing to check


def test_signature_required_and_checked(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    bundle = _bundle(tmp_path / "b", key=keys[0])
    assert open_bundle(bundle, trusted_keys=[keys[1]], require_signature=True).signed_by
    with pytest.raises(SignatureError, match="refusing to overwrite"):
        generate_keypair(keys[0])
    (bundle / "model_64_int8.onnx").write_bytes(MODEL.upper())
    with pytest.raises(BundleIntegrityError, match="does not match its sha256"):
        open_bundle(bundle, trusted_keys=[keys[1]], require_signature=True)


def test_long_names_and_extended_headers(tmp_path: Path) -> None:
    long = "reference/" + "x" * 150 + ".jpg"  # over ustar's 100 characters: a pax header carries it
    bundle = _bundle(tmp_path / "b", extra={long: b"jpeg"})
    opened = extract_bundle(pack(bundle, tmp_path / "b.tar.gz"), tmp_path / "out")
    assert (opened.path / long).read_bytes() == b"jpeg"
    gnu = tmp_path / "gnu.tar.gz"
    with tarfile.open(gnu, "w:gz", format=tarfile.GNU_FORMAT) as tar:  # GNU long-name headers
        for name in (MANIFEST, "labels.txt", "model_64_int8.onnx", long):
            tar.add(bundle / name, arcname=name)
    assert (extract_bundle(gnu, tmp_path / "gnu").path / long).read_bytes() == b"jpeg"
    huge = tarfile.TarInfo("x" * 200)
    huge.pax_headers = {"comment": "c" * MAX_EXTENDED}
    with tarfile.open(tmp_path / "pax.tar.gz", "w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(huge)
    with pytest.raises(BundleError, match="extended tar header declares"):
        extract(tmp_path / "pax.tar.gz", tmp_path / "pax")


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
    (bundle / MANIFEST).write_text(text.replace('"name": "tiny"', '"name": "tiny", "serial": -1'))
    with pytest.raises(BundleError, match="invalid at serial"):
        open_bundle(bundle)
    (bundle / MANIFEST).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        open_bundle(bundle)


def test_a_bundle_without_a_serial_keeps_its_bytes_and_reads_as_serial_0(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "b")
    manifest, raw = read_manifest(bundle)
    assert manifest.serial == 0 and "serial" not in json.loads(raw) and manifest.to_bytes() == raw
    numbered = manifest.model_copy(update={"serial": 20260101120000})
    assert json.loads(numbered.to_bytes())["serial"] == 20260101120000


@pytest.mark.parametrize("form", ["folder", "archive"])
def test_sign_sets_the_serial_it_is_given(tmp_path: Path, keys: tuple[Path, Path, Path], form: str) -> None:
    bundle = _bundle(tmp_path / "b")
    target = bundle if form == "folder" else pack(bundle, tmp_path / "b.tar.gz")
    assert sign_path(target, keys[0], serial=42).serial == 42
    opened = open_bundle(target, trusted_keys=[keys[1]], unpack_dir=tmp_path / "unpacked")
    assert opened.manifest.serial == 42 and opened.signed_by
    assert sign_path(target, keys[0]).serial == 42  # without --serial the manifest keeps its own
