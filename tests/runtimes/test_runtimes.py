from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from edge_node.bundle import open_bundle
from edge_node.bundle.manifest import read_manifest
from edge_node.errors import InferenceError
from edge_node.runtimes import REGISTRY, RUNTIMES, info, installed, open_session, versions


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
    from edge_node.bundle.manifest import VariantFile

    onnx = VariantFile(resolution=224, precision="int8", file="a.onnx")
    assert "runtime" not in onnx.model_dump(mode="json")
    tflite = VariantFile(resolution=224, precision="int8", file="a.tflite", runtime="litert")
    assert tflite.model_dump(mode="json")["runtime"] == "litert"
    assert VariantFile.model_validate(onnx.model_dump(mode="json")) == onnx


def test_onnxruntime_is_installed() -> None:
    assert installed("onnxruntime")


def test_the_registry_is_the_one_list_of_runtimes() -> None:
    """Settings, the toolchain's file names and layouts and the CLI read the registry, not a list of their own."""
    from pydantic import ValidationError

    from edge_node.config import ModelConfig
    from edge_node.modelzoo.build import model_file_name, runtimes_for

    assert RUNTIMES == tuple(REGISTRY) == ("onnxruntime", "litert")
    assert [ModelConfig(runtime=r).runtime for r in ("auto", *RUNTIMES)] == ["auto", *RUNTIMES]
    with pytest.raises(ValidationError):
        ModelConfig(runtime="tvm")
    assert runtimes_for("both") == RUNTIMES and runtimes_for("litert") == ("litert",)
    assert [model_file_name(224, "int8", r) for r in RUNTIMES] == ["model_224_int8.onnx", "model_224_int8.tflite"]
    assert info("litert").install == "pip install 'ghostpi-edge-node[litert]'"
    assert info("onnxruntime").install == "pip install onnxruntime"
    with pytest.raises(ValueError, match="unknown runtime 'tvm'; expected one of onnxruntime, litert"):
        info("tvm")
    with pytest.raises(ValueError, match="unknown runtime"):
        runtimes_for("tvm")
    assert versions()["onnxruntime"] == metadata.version("onnxruntime")


def test_onnx_session_runs_named_outputs(tiny_bundle: Path) -> None:
    """The toolchain's feature export reads two named outputs through the same session class as the node."""
    session = open_session(open_bundle(tiny_bundle).model_file(160, "int8"), "onnxruntime", threads=1)
    x = np.random.default_rng(0).standard_normal((1, 3, 160, 160)).astype(np.float32)
    [named] = session.run_outputs(x, [session.output_names[0]])
    np.testing.assert_array_equal(named, session.run(x))
    with pytest.raises(InferenceError, match="inference failed"):
        session.run_outputs(x, ["no_such_output"])


@pytest.mark.parametrize("spin", [False, True])
def test_onnx_sessions_get_the_spin_switch(tiny_bundle: Path, spin: bool) -> None:
    """``spin`` reaches ONNX Runtime as its two allow_spinning entries; off is the default everywhere."""
    from edge_node.runtimes.onnx import OrtSession

    path = open_bundle(tiny_bundle).model_file(160, "int8")
    session = open_session(path, "onnxruntime", threads=2, spin=spin)
    assert isinstance(session, OrtSession)
    options = session._session.get_session_options()
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert options.get_session_config_entry(key) == ("1" if spin else "0")
    default = open_session(path, "onnxruntime", threads=2)
    assert isinstance(default, OrtSession)
    assert default._session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
