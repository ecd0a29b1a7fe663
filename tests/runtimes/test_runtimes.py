from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_node.bundle import open_bundle
from edge_node.bundle.manifest import read_manifest
from edge_node.errors import InferenceError
from edge_node.runtimes import installed, open_session


def test_onnx_session_runs_a_bundle_file(tiny_bundle: Path) -> None:
    bundle = open_bundle(tiny_bundle)
    session = open_session(bundle.model_file(160, "int8"), "onnxruntime", threads=1)
    out = session.run(np.zeros((1, 3, 160, 160), np.float32))
    assert session.runtime == "onnxruntime" and out.dtype == np.float32 and out.shape == (1, 10)


def test_onnx_session_translates_load_and_run_errors(tmp_path: Path, tiny_bundle: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(InferenceError, match=r"ONNX Runtime cannot load junk\.onnx"):
        open_session(junk, "onnxruntime", threads=1)
    session = open_session(open_bundle(tiny_bundle).model_file(160, "int8"), "onnxruntime", threads=1)
    with pytest.raises(InferenceError, match="inference failed"):
        session.run(np.zeros((1, 3), np.float32))


def test_manifest_without_runtime_field_is_an_onnx_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    """Bundles made before LiteRT support have no ``runtime`` on their variants: they still load."""
    raw = json.loads((tiny_bundle / "manifest.json").read_text())
    for v in raw["variants"]:
        v.pop("runtime", None)
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    manifest, _ = read_manifest(tmp_path)
    assert manifest.runtimes() == ["onnxruntime"]
    assert manifest.resolutions("int8") == [224, 192, 160]
    assert manifest.resolutions("int8", "litert") == []


def test_onnx_variants_are_written_as_older_nodes_read_them() -> None:
    from edge_node.bundle.manifest import Variant

    onnx = Variant(resolution=224, precision="int8", file="a.onnx")
    assert "runtime" not in onnx.model_dump(mode="json")
    tflite = Variant(resolution=224, precision="int8", file="a.tflite", runtime="litert")
    assert tflite.model_dump(mode="json")["runtime"] == "litert"
    assert Variant.model_validate(onnx.model_dump(mode="json")) == onnx


def test_onnxruntime_is_installed() -> None:
    assert installed("onnxruntime")
