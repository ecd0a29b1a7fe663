"""ONNX Runtime calibration ranges over many images, in memory that does not grow with the image count.

ORT's histogram calibrators (Percentile, Entropy, Distribution) keep every activation of every calibration
image until they build their histograms: 100 images of EfficientNet-Lite0 at 224 px took ~6 GB, more than a
Raspberry Pi has. Feeding them in chunks instead changes the bins (the first chunk fixes the bin width) and
with it the accuracy. Here the same histograms are built in two passes, one image at a time: the first finds
each tensor's range, the second fills the bins ORT would have chosen for all the images at once. MinMax needs
one pass (the range of per-image ranges is the range). The result equals ORT's own (tested).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import cast

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator
from onnxruntime.quantization.calibrate import CalibraterBase, HistogramCalibrater, HistogramCollector, TensorsData
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

__all__ = ["calibrate", "quantizable_op_types"]

log = logging.getLogger(__name__)


def quantizable_op_types() -> list[str]:
    """What quantize_static calibrates when no op types are named."""
    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def calibrate(
    model: Path,
    input_name: str,
    images: Sequence[np.ndarray],
    *,
    method: str,
    workdir: Path,
    op_types: Sequence[str] = (),
    options: Mapping[str, object] | None = None,
) -> TensorsData:
    """Calibration ranges of ``model`` on ``images`` (ORT's ``calibrate_method`` by name, its calibrator options)."""
    if not images:
        raise ValueError("calibration needs at least one image")
    calibrator = create_calibrator(
        model,
        list(op_types) or quantizable_op_types(),
        augmented_model_path=str(workdir / "augmented.onnx"),
        calibrate_method=CalibrationMethod[method],
        extra_options=dict(options or {}),
    )
    with contextlib.redirect_stdout(io.StringIO()) as chatter:  # ORT prints its progress
        if isinstance(calibrator, HistogramCalibrater):
            ranges = _histograms(calibrator, input_name, images, CalibrationMethod[method])
        else:
            ranges = _min_max(calibrator, input_name, images)
    for line in chatter.getvalue().splitlines():
        log.debug("onnxruntime calibration: %s", line)
    return ranges


class _One(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, feed: dict[str, np.ndarray]) -> None:
        self._feed: dict[str, np.ndarray] | None = feed

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed, self._feed = self._feed, None
        return feed


def _feed(input_name: str, image: np.ndarray) -> dict[str, np.ndarray]:
    return {input_name: np.ascontiguousarray(image, dtype=np.float32)}


def _min_max(calibrator: CalibraterBase, input_name: str, images: Sequence[np.ndarray]) -> TensorsData:
    for image in images:  # each call merges this image's ranges into the previous ones
        calibrator.collect_data(_One(_feed(input_name, image)))
    ranges = calibrator.compute_data()
    assert isinstance(ranges, TensorsData)
    return ranges


def _activations(
    calibrator: HistogramCalibrater, input_name: str, images: Sequence[np.ndarray]
) -> Iterator[dict[str, np.ndarray]]:
    """Per image: the calibrated tensors' values, by name (one image's activations alive at a time)."""
    session = calibrator.infer_session
    names = [o.name for o in session.get_outputs()]
    wanted = set(calibrator.tensors_to_calibrate or ())
    for image in images:
        outputs = session.run(None, _feed(input_name, image))
        yield {n: a.ravel() for n, a in zip(names, outputs, strict=True) if n in wanted and a.size}


def _histograms(
    calibrator: HistogramCalibrater, input_name: str, images: Sequence[np.ndarray], method: CalibrationMethod
) -> TensorsData:
    absolute = calibrator.method == "percentile" and calibrator.symmetric  # ORT's collect_absolute_value
    low: dict[str, np.ndarray] = {}
    high: dict[str, np.ndarray] = {}
    abs_low: dict[str, np.ndarray] = {}
    abs_high: dict[str, np.ndarray] = {}
    for values in _activations(calibrator, input_name, images):  # pass 1: ranges
        for name, a in values.items():
            _widen(low, high, name, np.nanmin(a), np.nanmax(a))
            if absolute:
                m = np.absolute(a)
                _widen(abs_low, abs_high, name, m.min(), m.max())
    bins = calibrator.num_bins
    spans: dict[str, tuple[float, float]] = {}  # numpy scalars of the data's dtype, as numpy itself would use
    threshold: dict[str, np.ndarray] = {}
    for name in low:
        if absolute:  # numpy's choice for the whole array: `bins` equal bins from its min to its max
            spans[name] = cast("tuple[float, float]", (abs_low[name], abs_high[name]))
        else:  # ORT's collect_value: symmetric around zero
            threshold[name] = np.array(max(abs(low[name]), abs(high[name])), dtype=low[name].dtype)
            spans[name] = cast("tuple[float, float]", (-threshold[name], threshold[name]))
    counts: dict[str, np.ndarray] = {}
    for values in _activations(calibrator, input_name, images):  # pass 2: the same bins, filled image by image
        for name, a in values.items():
            h, _ = np.histogram(np.absolute(a) if absolute else a, bins=bins, range=spans[name])
            counts[name] = h if name not in counts else counts[name] + h
    collector = HistogramCollector(
        method=calibrator.method,
        symmetric=calibrator.symmetric,
        num_bins=bins,
        num_quantized_bins=calibrator.num_quantized_bins,
        percentile=calibrator.percentile,
        scenario=calibrator.scenario,
    )
    for name, hist in counts.items():
        first, last = spans[name]
        edges = np.histogram_bin_edges(np.array([first, last], dtype=low[name].dtype), bins=bins, range=spans[name])
        if absolute:
            collector.histogram_dict[name] = (hist, edges.astype(low[name].dtype), low[name], high[name])
        else:
            collector.histogram_dict[name] = (hist, edges, low[name], high[name], threshold[name])
    return TensorsData(method, collector.compute_collection_result())


def _widen(low: dict[str, np.ndarray], high: dict[str, np.ndarray], name: str, lo: np.ndarray, hi: np.ndarray) -> None:
    low[name] = lo if name not in low else min(low[name], lo)
    high[name] = hi if name not in high else max(high[name], hi)
