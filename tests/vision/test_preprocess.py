from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from edge_node.bundle.manifest import Preprocess
from edge_node.capture.base import Frame
from edge_node.capture.stills import demo_photos
from edge_node.vision.preprocess import Preprocessor, center_square

IMAGENET = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def reference(frame_bgr: np.ndarray, spec: Preprocess, r: int) -> np.ndarray:
    """The textbook pipeline: resize shorter side to r/crop_pct, centre crop, RGB, normalise, CHW, float64."""
    h, w = frame_bgr.shape[:2]
    short = r / spec.crop_pct
    scale = short / min(h, w)
    resized = cv2.resize(frame_bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    top, left = (resized.shape[0] - r) // 2, (resized.shape[1] - r) // 2
    crop = resized[top : top + r, left : left + r]
    if spec.color == "RGB":
        crop = crop[:, :, ::-1]
    x: npt.NDArray[np.float64] = (crop.astype(np.float64) / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    return x.transpose(2, 0, 1)[None]


def photo() -> Frame:
    pytest.importorskip("skimage")  # the demo photos ship inside scikit-image (the demo extra)
    return dict(demo_photos())["chelsea"]  # 300 x 451, a real photo


def test_exact_normalisation_and_layout_when_no_resize_is_needed() -> None:
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    spec = Preprocess(mean=IMAGENET.mean, std=IMAGENET.std, crop_pct=1.0)
    out = Preprocessor(spec, 96)(frame)
    assert out.shape == (1, 3, 96, 96) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(frame, spec, 96), atol=1e-5)


@pytest.mark.parametrize("resolution", [224, 192, 160])
def test_matches_the_textbook_pipeline_on_a_real_photo(resolution: int) -> None:
    frame = photo()
    spec = IMAGENET.model_copy(update={"interpolation": "area"})
    out = Preprocessor(spec, resolution)(frame)
    ref = reference(frame, spec, resolution)
    assert out.shape == ref.shape
    # Crop-then-resize cuts the same region as resize-then-crop, up to where each rounds the crop offset:
    # at most about one output pixel apart, and otherwise the same picture.
    a, b = out[0, 1].astype(np.float64), ref[0, 1]
    (dx, dy), _ = cv2.phaseCorrelate(a, b)
    assert abs(dx) <= 1.5 and abs(dy) <= 1.5
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.98
    assert abs(out.mean() - ref.mean()) < 0.01


def test_bgr_models_and_uint8_nhwc_inputs() -> None:
    frame = photo()
    bgr = Preprocessor(Preprocess(color="BGR", mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0), 64)(frame)
    rgb = Preprocessor(Preprocess(color="RGB", mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0), 64)(frame)
    np.testing.assert_array_equal(bgr[0, 0], rgb[0, 2])
    raw = Preprocessor(Preprocess(layout="NHWC", input_dtype="uint8", crop_pct=1.0), 64)(frame)
    assert raw.shape == (1, 64, 64, 3) and raw.dtype == np.uint8
    np.testing.assert_array_equal(raw[0, :, :, 0], ((rgb[0, 0] * 0.5 + 0.5) * 255).round().astype(np.uint8))


def test_output_buffer_is_reused_not_reallocated() -> None:
    p = Preprocessor(IMAGENET, 160)
    frame = photo()
    first = p(frame)
    assert p(frame[:200, :300]) is first  # another frame size, still the same buffer


def test_center_square_geometry() -> None:
    assert center_square(480, 640, 0.875) == (30, 110, 420)
    assert center_square(640, 480, 1.0) == (80, 0, 480)


def test_rejects_frames_that_are_not_bgr() -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        Preprocessor(IMAGENET, 160)(np.zeros((10, 10), np.uint8))


@pytest.mark.parametrize(("color", "dtype"), [("RGB", "float32"), ("BGR", "float32"), ("RGB", "uint8")])
def test_nhwc_is_exactly_nchw_transposed(color: Literal["RGB", "BGR"], dtype: Literal["float32", "uint8"]) -> None:
    """TFLite files take NHWC; the fast NHWC path must compute exactly what the NCHW path does."""
    frame = np.random.default_rng(5).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    spec = Preprocess(color=color, input_dtype=dtype)
    nchw = Preprocessor(spec, 96, layout="NCHW")(frame).copy()
    nhwc = Preprocessor(spec, 96, layout="NHWC")(frame)
    assert nhwc.shape == (1, 96, 96, 3) and nhwc.dtype == nchw.dtype
    np.testing.assert_allclose(nhwc[0], nchw[0].transpose(1, 2, 0), atol=1e-6)
