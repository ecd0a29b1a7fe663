"""Training folders (layouts, the stratified split, errors that say what to fix, the fingerprint), labels files,
augmentation, per-class metrics, the INT8 gate and the confusion plot. No torch needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_node.errors import BundleError, DatasetError
from edge_node.modelzoo.augment import Jitter, augment
from edge_node.modelzoo.build import check_int8_gate
from edge_node.modelzoo.classmetrics import balanced_accuracy, class_stats, confusion_matrix
from edge_node.modelzoo.dataset import load_dataset
from edge_node.modelzoo.images import list_images, load_bgr, shrink_to_frame
from edge_node.modelzoo.labels import imagenet_labels, label_table, read_labels
from edge_node.modelzoo.report import plot_confusion, print_confusion, print_per_class


def _photo(path: Path, seed: int, size: tuple[int, int] = (48, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def _folder(root: Path, counts: dict[str, int]) -> Path:
    seed = 0
    for name, n in counts.items():
        for i in range(n):
            _photo(root / name / f"IMG_{i:04d}.jpg", seed := seed + 1)
    return root


def test_class_folders_split_per_class_by_a_fixed_rule(tmp_path: Path) -> None:
    root = _folder(tmp_path / "photos", {"parcel": 20, "empty": 7, "cat": 2})
    ds = load_dataset(root)
    assert ds.classes == ("cat", "empty", "parcel")  # sorted folder names: line i of labels.txt
    assert ds.counts(ds.val) == {"cat": 1, "empty": 1, "parcel": 4}  # max(1, round(n * 0.2))
    assert ds.counts(ds.train) == {"cat": 1, "empty": 6, "parcel": 16}
    assert {s.name for s in ds.train}.isdisjoint(s.name for s in ds.val)
    assert all(ds.classes[s.label] == s.path.parent.name for s in (*ds.train, *ds.val))
    again = load_dataset(root)
    assert (again.train, again.val) == (ds.train, ds.val)  # deterministic
    other_seed = load_dataset(root, seed=1)
    assert {s.name for s in other_seed.val} != {s.name for s in ds.val}
    assert ds.rule.describe()["layout"] == "stratified"
    assert any("fewer than 20 training images" in w for w in ds.warnings)


def test_adding_photos_only_moves_photos_at_the_boundary(tmp_path: Path) -> None:
    root = _folder(tmp_path / "photos", {"a": 30, "b": 30})
    before = load_dataset(root)
    for i in range(5):
        _photo(root / "a" / f"new_{i}.jpg", 1000 + i)
    after = load_dataset(root)
    old_val, new_val = {s.name for s in before.val}, {s.name for s in after.val}
    new_photos = {f"a/new_{i}.jpg" for i in range(5)}
    assert len(new_val) - len(old_val) == 1  # class a holds out round(35 * 0.2) = 7 instead of 6
    # only new photos ranked into validation push old ones out, and only the added slot takes one from training
    assert len(old_val - new_val) <= len(new_val & new_photos)
    assert len(new_val - old_val - new_photos) <= 1
    assert {s.name for s in after.val if s.name.startswith("b/")} == {n for n in old_val if n.startswith("b/")}


def test_train_and_val_folders_are_used_as_given(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _folder(root / "train", {"dog": 3, "bird": 3})
    _folder(root / "valid", {"dog": 2})
    ds = load_dataset(root)
    assert ds.rule.layout == "folders" and ds.classes == ("bird", "dog")
    assert ds.counts(ds.val) == {"bird": 0, "dog": 2}
    assert all(s.name.startswith("valid/") for s in ds.val)
    assert any("no validation images" in w and "bird" in w for w in ds.warnings)
    _folder(root / "valid", {"fish": 1})
    with pytest.raises(DatasetError, match=r"class folder\(s\) \['fish'\] that .* does not have"):
        load_dataset(root)


def test_only_a_train_folder_is_split(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _folder(root / "train", {"dog": 5, "bird": 5})
    ds = load_dataset(root)
    assert ds.rule.layout == "stratified" and ds.classes == ("bird", "dog") and len(ds.val) == 2


@pytest.mark.parametrize(
    ("counts", "extra", "message"),
    [
        ({"dog": 4}, None, r"1 class folder\(s\) with images; put each class's photos in its own folder"),
        ({"dog": 4, "cat": 1}, None, r"class\(es\) \['cat'\] have a single image"),
        ({"dog": 4, "cat": 4}, "cat/IMG_9.HEIC", r"\.heic .*heif-convert"),
    ],
)
def test_unusable_folders_are_refused_with_what_to_do(
    tmp_path: Path, counts: dict[str, int], extra: str | None, message: str
) -> None:
    root = _folder(tmp_path / "photos", counts)
    if extra:
        (root / extra).write_bytes(b"not decodable by OpenCV")
    with pytest.raises(DatasetError, match=message):
        load_dataset(root)


def test_missing_folder_bad_fraction_and_padded_class_names(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    root = _folder(tmp_path / "photos", {"dog": 3, "cat ": 3})
    with pytest.raises(DatasetError, match="between 0 and 1"):
        load_dataset(root, val_fraction=1.0)
    with pytest.raises(DatasetError, match="start or end with spaces"):
        load_dataset(root)


def test_fingerprint_counts_and_content_hash(tmp_path: Path) -> None:
    root = _folder(tmp_path / "photos", {"dog": 5, "cat": 5})
    fp = load_dataset(root).fingerprint()
    assert fp["classes"] == ["cat", "dog"] and fp["files"] == 10
    assert fp["train"] == {"cat": 4, "dog": 4} and fp["val"] == {"cat": 1, "dog": 1}
    copy = tmp_path / "copy"
    for p in root.rglob("*.jpg"):
        (copy / p.parent.name).mkdir(parents=True, exist_ok=True)
        (copy / p.parent.name / p.name).write_bytes(p.read_bytes())
    assert load_dataset(copy).files_sha256() == fp["files_sha256"]  # same photos, same hash, anywhere
    _photo(copy / "dog" / "IMG_0000.jpg", 999)  # same name, other content
    assert load_dataset(copy).files_sha256() != fp["files_sha256"]


def test_duplicates_and_loose_files_are_reported(tmp_path: Path) -> None:
    root = _folder(tmp_path / "photos", {"dog": 3, "cat": 3})
    (root / "cat" / "copy.jpg").write_bytes((root / "dog" / "IMG_0000.jpg").read_bytes())
    _photo(root / "stray.jpg", 7)
    warnings = load_dataset(root).warnings
    assert any("appear more than once" in w and "cat/copy.jpg = dog/IMG_0000.jpg" in w for w in warnings)
    assert any("directly in" in w and "ignored" in w for w in warnings)


def test_labels_files_are_read_as_the_node_reads_them(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("parcel\n empty \ncat\n\n")
    assert read_labels(good) == ("parcel", "empty", "cat")
    for text, message in [
        ("a\n\nb\n", r"blank line\(s\) \[2\]"),
        ("a\nb\na\n", r"\['a'\] more than once"),
        ("only\n", "at least 2"),
    ]:
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(BundleError, match=message):
            read_labels(bad)
    with pytest.raises(BundleError, match="cannot read labels file"):
        read_labels(tmp_path / "missing.txt")


def test_label_tables_name_folders_by_wnid_or_by_label(tmp_path: Path) -> None:
    assert label_table(imagenet_labels())["n01440764"] == 0
    assert label_table(("parcel", "empty")) == {"parcel": 0, "empty": 1}
    _photo(tmp_path / "empty" / "IMG_1.jpg", 1)
    _photo(tmp_path / "unknown" / "IMG_2.jpg", 2)
    found = {im.path.parent.name: im.label for im in list_images(tmp_path, label_table(("parcel", "empty")))}
    assert found == {"empty": 1, "unknown": None}


def test_large_photos_are_shrunk_like_a_camera_frame(tmp_path: Path) -> None:
    big = np.zeros((3024, 4032, 3), np.uint8)
    big[:, 2016:] = 200
    small = shrink_to_frame(big, 480)
    assert small.shape == (480, 640, 3)
    assert small[:, :300].max() == 0 and small[:, 340:].min() == 200  # area averaging keeps the edge
    photo = _photo(tmp_path / "p.jpg", 1, size=(300, 400))
    assert load_bgr(photo, frame_side=480).shape == (300, 400, 3)  # smaller photos are left alone
    assert load_bgr(photo, frame_side=150).shape == (150, 200, 3)


def test_augmented_views_are_mild_deterministic_and_leave_the_photo_alone() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    before = frame.copy()
    a = [augment(frame, np.random.default_rng(5)) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    np.testing.assert_array_equal(frame, before)
    views = [augment(frame, np.random.default_rng(i)) for i in range(50)]
    for v in views:
        h, w = v.shape[:2]
        area = h * w / (240 * 320)
        assert v.dtype == np.uint8 and v.flags.c_contiguous
        assert 0.5 <= area <= 1.0  # Jitter.area (0.6-1.0), clipped to the frame by the aspect ratio
    assert len({v.shape for v in views}) > 10  # the window really varies
    none = Jitter(area=(1.0, 1.0), aspect=(1.0, 1.0), flip=0.0, brightness=0.0, contrast=0.0, saturation=0.0)
    np.testing.assert_array_equal(augment(frame, np.random.default_rng(1), none), frame)


def test_per_class_figures_from_the_confusion_matrix() -> None:
    truth = np.array([0, 0, 0, 0, 1, 1, 2, 2], dtype=np.int64)
    predicted = np.array([0, 0, 0, 1, 1, 0, 2, 2], dtype=np.int64)
    m = confusion_matrix(truth, predicted, 4)
    assert m.tolist() == [[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]]
    stats = class_stats(m)
    assert (stats[0].recall, stats[0].precision) == (0.75, 0.75)
    assert stats[1].f1 == pytest.approx(0.5) and stats[3].recall is None and stats[3].f1 is None
    assert balanced_accuracy(m) == pytest.approx((0.75 + 0.5 + 1.0) / 3)  # classes without images don't count
    assert balanced_accuracy(np.zeros((2, 2), np.int64)) is None


def test_int8_gate_allows_one_image_or_max_drop() -> None:
    def rows(fp32: float, int8: float, labelled: int) -> list[dict[str, object]]:
        common = {"resolution": 224, "labelled": labelled}
        return [
            {"precision": "fp32", "file": "f", "top1": fp32, **common},
            {"precision": "int8", "file": "model_224_int8.onnx", "top1": int8, **common},
        ]

    check_int8_gate(rows(0.90, 0.89, 100), 0.01)  # one point, one image: allowed
    check_int8_gate(rows(0.90, 0.8667, 30), 0.01)  # one image of 30 (3.3 points): allowed
    with pytest.raises(BundleError, match=r"model_224_int8.onnx: INT8 top-1 is 2.0 points below FP32"):
        check_int8_gate(rows(0.90, 0.88, 100), 0.01)
    check_int8_gate(rows(0.90, 0.88, 100), 0.05)
    check_int8_gate([*rows(0.9, 0.5, 10)[:1], {"precision": "int8", "resolution": 160, "top1": 0.1}], 0.01)


def test_confusion_tables_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = ("dog", "bird", "café")
    m = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 5]], dtype=np.int64)
    print_per_class(labels, m, title="per class")
    print_confusion(labels, m, title="matrix")
    out = capsys.readouterr().out
    assert "bird (2)" in out  # dog is most often mistaken for bird
    assert "80.00%" in out and "balanced accuracy" in out
    png = plot_confusion(labels, m, tmp_path / "plots" / "c.png", title="test")
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 150 and img.shape[1] > 150
    blue_cells = np.sum((img[:, :, 0] > 200) & (img[:, :, 2] < 120))  # the dark blue diagonal
    assert blue_cells > 500
    with pytest.raises(BundleError, match="unreadable"):
        plot_confusion([str(i) for i in range(51)], np.eye(51, dtype=np.int64), tmp_path / "x.png", title="t")


def test_the_command_line_loads_without_torch() -> None:
    """A Pi has no torch: building the parser (for ``run`` too) must not import the training stack."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\n"
        "from edge_node.cli import _parser\n"
        "args = _parser().parse_args(['model', 'train', '--data', 'photos', '--out', 'b'])\n"
        "print(args.default_arch, args.frame_side, args.views, args.balance)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["efficientnet_lite0", "480", "4", "sqrt"]
