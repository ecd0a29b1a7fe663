"""Calibration ranges image by image: the same numbers as ONNX Runtime's own calibrator, in flat memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

from edge_node.modelzoo.export import export_onnx
from edge_node.modelzoo.quantize import QuantRecipe, quantize_int8
from edge_node.modelzoo.ranges import calibrate, quantizable_op_types


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, 1, 1), torch.nn.ReLU6(), torch.nn.Conv2d(16, 16, 3, 1, 1, groups=16),
            torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.Conv2d(16, 24, 1),
        )  # fmt: skip
        self.fc = torch.nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(self.body(x).mean((2, 3)))
        return logits


def _model(tmp: Path, res: int) -> Path:
    torch.manual_seed(0)
    return export_onnx(_Net().eval(), res, tmp / f"net{res}.onnx")


def _images(count: int, res: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)  # heavy tails, so percentiles and entropy have something to cut
    return [(rng.standard_t(3, size=(1, 3, res, res)) * (1 + i % 3)).astype(np.float32) for i in range(count)]


class _All(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped: its base class is Any
    def __init__(self, name: str, images: list[np.ndarray]) -> None:
        self._it = iter([{name: x} for x in images])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _model(tmp_path_factory.mktemp("ranges"), 24)


@pytest.mark.parametrize(
    ("method", "options"),
    [("MinMax", {}), ("Percentile", {"percentile": 99.9}), ("Entropy", {"num_bins": 64, "num_quantized_bins": 16})],
)
def test_ranges_equal_onnxruntimes_own(model: Path, tmp_path: Path, method: str, options: dict[str, object]) -> None:
    images = _images(9, 24)
    ours = calibrate(model, "input", images, method=method, workdir=tmp_path, options=options)

    (tmp_path / "ort").mkdir()
    ort = create_calibrator(
        model, quantizable_op_types(), augmented_model_path=str(tmp_path / "ort" / "aug.onnx"),
        calibrate_method=CalibrationMethod[method], extra_options=options,
    )  # fmt: skip
    ort.collect_data(_All("input", images))  # ORT's way: all images' activations at once
    theirs = ort.compute_data()

    assert ours.calibration_method == theirs.calibration_method
    assert set(ours.data) == set(theirs.data) and len(ours.data) >= 5
    for name, expected in theirs.data.items():
        np.testing.assert_array_equal(ours.data[name].range_value, expected.range_value, err_msg=name)
    if method != "MinMax":  # the per-image ranges alone would not give these
        assert any(ours.data[n].range_value[1] < max(float(x.max()) for x in images) for n in ours.data)


def test_quantization_memory_does_not_grow_with_the_calibration_set(tmp_path: Path) -> None:
    """ORT's histogram calibration held every image's activations: 100 Lite0 images at 224 px took ~6 GB."""
    res = 112  # ~2.4 MB of activations per image
    model = _model(tmp_path, res)
    recipe = QuantRecipe(method="Percentile", percentile=99.99, weight_only_op_types=())
    peaks = []
    for count in (4, 24):
        tracemalloc.start()
        try:
            quantize_int8(model, tmp_path / f"int8_{count}.onnx", _images(count, res), arch="t", recipe=recipe)
            peaks.append(tracemalloc.get_traced_memory()[1] - sum(x.nbytes for x in _images(count, res)))
        finally:
            tracemalloc.stop()
    assert peaks[1] < 1.3 * peaks[0], f"peak {peaks[0] / 1e6:.1f} MB with 4 images, {peaks[1] / 1e6:.1f} MB with 24"
