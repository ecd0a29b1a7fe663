"""The LiteRT runtime (edge_node.runtimes.litert) and the TFLite toolchain (edge_node.modelzoo.litert_export).

A small real CNN is converted once with litert-torch (FP32) and quantised with ai-edge-quantizer (INT8, float
and integer I/O); the sessions run it with XNNPACK and are compared with PyTorch.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_node.errors import BundleError, InferenceError, MissingExtraError
from edge_node.runtimes import installed, open_session

pytest.importorskip("torch")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

import torch

from edge_node.modelzoo.export import torch_logits
from edge_node.modelzoo.litert_export import LiteRTRecipe, export_tflite, quantize_tflite, scope_regex
from edge_node.runtimes.litert import LiteRTSession

R = 32
CLASSES = 6


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU6())
        self.blocks = torch.nn.Sequential(
            torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.ReLU6()),
            torch.nn.Sequential(torch.nn.Conv2d(16, 32, 1), torch.nn.ReLU6()),
        )
        self.head = torch.nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))
        return logits


def _inputs(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (1, R, R, 3)).astype(np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    model = _Net().eval()
    work = tmp_path_factory.mktemp("litert")
    paths = {"fp32": work / "fp32.tflite", "int8": work / "int8.tflite", "int8_io": work / "int8_io.tflite"}
    paths["model"] = work / "model.pt"
    torch.save(model.state_dict(), paths["model"])
    export_tflite(model, R, paths["fp32"])
    calibration = _inputs(16, seed=1)
    quantize_tflite(paths["fp32"], paths["int8"], calibration, arch="test", recipe=LiteRTRecipe())
    quantize_tflite(paths["fp32"], paths["int8_io"], calibration, arch="test", recipe=LiteRTRecipe(float_io=False))
    return paths


def _model(files: dict[str, Path]) -> torch.nn.Module:
    model = _Net().eval()
    model.load_state_dict(torch.load(files["model"]))
    return model


def test_fp32_file_matches_pytorch_and_returns_fresh_arrays(files: dict[str, Path]) -> None:
    session = open_session(files["fp32"], "litert", threads=2)
    assert session.runtime == "litert"
    inputs = _inputs(4, seed=2)
    reference = torch_logits(_model(files), inputs)  # NHWC inputs are permuted for PyTorch
    outs = [session.run(x) for x in inputs]
    assert all(o.dtype == np.float32 and o.shape == (1, CLASSES) for o in outs)
    assert np.max(np.abs(np.concatenate(outs) - reference)) < 1e-4
    first = outs[0].copy()
    outs[0][:] = 0  # the caller owns the array: the next run is unaffected
    np.testing.assert_array_equal(session.run(inputs[0]), first)


def test_int8_files_take_float_input_and_agree_with_fp32(files: dict[str, Path]) -> None:
    fp32 = open_session(files["fp32"], "litert", threads=1)
    float_io = open_session(files["int8"], "litert", threads=1)
    int_io = open_session(files["int8_io"], "litert", threads=1)
    assert isinstance(float_io, LiteRTSession) and isinstance(int_io, LiteRTSession)
    assert float_io.input_dtype == np.float32
    assert int_io.input_dtype == np.int8  # quantised by the session
    inputs = _inputs(8, seed=3)
    want = np.concatenate([fp32.run(x) for x in inputs])
    for session in (float_io, int_io):
        got = np.concatenate([session.run(x) for x in inputs])
        assert got.dtype == np.float32
        assert np.max(np.abs(got - want)) < 0.1 * np.max(np.abs(want))


def test_recipe_keeps_the_named_modules_in_fp32(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "mixed.tflite"
    recipe = quantize_tflite(
        files["fp32"], out, _inputs(4, seed=4), arch="test", recipe=LiteRTRecipe(scopes_to_exclude=("blocks.0",))
    )
    assert recipe["scopes_to_exclude"] == ["blocks.0"]
    assert open_session(out, "litert", threads=1).run(_inputs(1, seed=5)[0]).shape == (1, CLASSES)
    with pytest.raises(BundleError, match=r"no op of fp32\.tflite carries those module paths"):
        quantize_tflite(
            files["fp32"],
            tmp_path / "x.tflite",
            _inputs(2, 6),
            arch="t",
            recipe=LiteRTRecipe(scopes_to_exclude=("nope",)),
        )


def test_scope_regex_matches_the_ops_own_module_path_only() -> None:
    name = (
        "litert_torch.Wrapper/timm.EfficientNet_wrapped/torch.nn.Sequential_blocks/torch.nn.Sequential_1/"
        "timm.InvertedResidual_0/torch.nn.Conv2d_conv_pw;1"
    )
    fused = "x.W/y.Net_wrapped/torch.nn.Sequential_blocks/torch.Sequential_2/a_conv;x/torch.Sequential_blocks/b_1/"
    assert re.search(scope_regex("blocks.1"), name)
    assert not re.search(scope_regex("blocks.0"), name)
    assert not re.search(scope_regex("blocks.1"), name.replace("Sequential_1/", "Sequential_12/"))
    assert not re.search(scope_regex("blocks.1"), fused)  # only the first of ';'-joined names counts


def test_session_errors_are_translated(files: dict[str, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(InferenceError, match=r"LiteRT cannot load junk\.tflite"):
        open_session(junk, "litert", threads=1)
    with pytest.raises(InferenceError, match="no such file"):
        open_session(tmp_path / "missing.tflite", "litert", threads=1)
    session = open_session(files["fp32"], "litert", threads=1)
    with pytest.raises(InferenceError, match=r"shape \(1, 32, 32, 3\), got \(1, 3, 32, 32\).*layout"):
        session.run(np.zeros((1, 3, R, R), np.float32))


def test_without_the_package_the_error_names_the_extra(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'ghostpi-edge-node\[litert\]'"):
        open_session(files["fp32"], "litert", threads=1)


def test_litert_is_imported_only_when_a_file_is_opened() -> None:
    code = "import sys, edge_node.runtimes.litert, edge_node.bundle.reference; print('ai_edge_litert' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert installed("litert")
