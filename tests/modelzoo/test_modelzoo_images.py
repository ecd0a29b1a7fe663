"""Image folder layouts, the deterministic calibration split and scikit-image calibration frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_node.errors import BundleError
from edge_node.modelzoo.calibration import from_folder, from_skimage
from edge_node.modelzoo.evaluate import select_images, topk_accuracy
from edge_node.modelzoo.images import is_calibration, list_images, split_calibration
from edge_node.modelzoo.labels import imagenet_labels, imagenet_wnids, wnid_index


def _write(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((40, 50, 3), 128, np.uint8))


def test_label_tables_are_complete() -> None:
    assert len(imagenet_labels()) == len(imagenet_wnids()) == 1000
    assert list(imagenet_wnids()) == sorted(imagenet_wnids())
    assert wnid_index()["n01440764"] == 0 and imagenet_labels()[0] == "tench"
    assert imagenet_labels()[281:286] == ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")


def test_flat_and_imagefolder_layouts(tmp_path: Path) -> None:
    _write(tmp_path / "n01440764_tench.JPEG")
    _write(tmp_path / "n01443537" / "goldfish_1.jpg")
    _write(tmp_path / "holiday.png")
    (tmp_path / "notes.txt").write_text("not an image")
    found = {im.path.name: im.label for im in list_images(tmp_path)}
    assert found == {"n01440764_tench.JPEG": 0, "goldfish_1.jpg": 1, "holiday.png": None}


def test_missing_or_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        list_images(tmp_path / "nope")
    with pytest.raises(BundleError, match="contains no images"):
        list_images(tmp_path)


def test_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    wnids = imagenet_wnids()
    for i in range(60):
        _write(tmp_path / f"{wnids[i]}_x{i}.JPEG")
    images = list_images(tmp_path)
    calib, held = split_calibration(images, limit=100)
    assert calib and len(held) >= 20
    assert {im.path for im in calib}.isdisjoint(im.path for im in held)
    assert all(is_calibration(im.path) for im in calib)
    assert split_calibration(list(reversed(images)), limit=100)[0] == list(reversed(calib))
    assert len(split_calibration(images, limit=3)[0]) == 3
    cal = from_folder(tmp_path)
    assert cal.names == [im.path.name for im in calib] and len(cal.held_out) == len(held)
    rest = select_images(tmp_path, exclude=set(cal.names))
    assert [im.path for im in rest] == [im.path for im in held]


def test_small_folders_are_used_whole_for_calibration(tmp_path: Path) -> None:
    for i in range(5):
        _write(tmp_path / f"img{i}.png")
    calib, held = split_calibration(list_images(tmp_path), limit=100)
    assert len(calib) == 5 and held == []


def test_skimage_calibration_frames_are_varied_bgr_uint8() -> None:
    cal = from_skimage(count=20, seed=0)
    assert len(cal.frames) == 20 and all(f.dtype == np.uint8 and f.shape[2] == 3 for f in cal.frames)
    assert not any("chelsea" in n or n.startswith("skimage:cat") for n in cal.names)
    assert len({f.shape for f in cal.frames}) > 10  # random crops
    again = from_skimage(count=20, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(cal.frames, again.frames, strict=True))


def test_topk_accuracy() -> None:
    top = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    labels = np.array([1, 6, 0])
    assert topk_accuracy(top, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(top, labels, 3) == pytest.approx(2 / 3)
