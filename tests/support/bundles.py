"""Tiny but real model bundles for tests: ONNX graphs built with the ``onnx`` helper API (no torch).

Each variant is ``input (1,3,R,R) -> GlobalAveragePool -> Flatten -> Gemm -> logits (1,num_classes)``;
the ``int8`` variants keep their Gemm weights as int8 behind a DequantizeLinear, like a QDQ model.
Weights are seeded by the version, so two versions predict differently.

``broken`` makes a bundle that fails at a chosen stage:

- ``"not_onnx"``: model files are random bytes (hashes match, so only loading the model fails)
- ``"nan"``: outputs are NaN (the warm-up's finite check fails)
- ``"shape"``: outputs have ``num_classes + 1`` scores (the warm-up's shape check fails)
- ``"slow"``: correct outputs after a chain of large MatMuls (passes warm-up, fails a tight latency bound)
- ``"hash"``: a model file changed after the manifest was written (integrity check fails)
- ``"labels"``: one label fewer than ``num_classes``
- ``"nan_on_camera"``: finite on a grey frame (what start-up checks with), NaN on brighter, real-looking frames
  (the synthetic camera's): a model that loads and passes its check but then fails on every frame
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_node.bundle import open_bundle
from edge_node.bundle.manifest import MANIFEST, SIGNATURE, BuildInfo, Manifest, Preprocess, Variant, file_digest
from edge_node.bundle.signing import generate_keypair, load_private_key, sign_bundle

__all__ = ["BROKEN", "make_key", "make_keys", "make_tiny_bundle", "resigned", "tiny_model"]

BROKEN = ("not_onnx", "nan", "shape", "slow", "hash", "labels", "nan_on_camera")
OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime >= 1.14
SLOW_MATMULS = 100  # ~50 ms per inference at 224 px on one core


def _seed(version: str, resolution: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{version}/{resolution}".encode()).digest()[:4], "little")


def tiny_model(
    resolution: int, num_classes: int, *, precision: str = "int8", seed: int = 0, broken: str | None = None
) -> onnx.ModelProto:
    """One classifier graph; see the module docstring for ``broken``."""
    rng = np.random.default_rng(seed)
    outputs = num_classes + 1 if broken == "shape" else num_classes
    weights = rng.normal(0.0, 2.0, size=(3, outputs)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, size=(outputs,)).astype(np.float32)
    inits = [numpy_helper.from_array(bias, "bias")]
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
    ]
    if precision == "int8":
        scale = np.float32(np.abs(weights).max() / 127.0)
        quant = np.clip(np.round(weights / scale), -127, 127).astype(np.int8)
        inits += [
            numpy_helper.from_array(quant, "w_q"),
            numpy_helper.from_array(np.array(scale, dtype=np.float32), "w_scale"),
            numpy_helper.from_array(np.array(0, dtype=np.int8), "w_zero"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"]))
    else:
        inits.append(numpy_helper.from_array(weights, "w"))
    logits = "logits" if broken not in ("nan", "slow", "nan_on_camera") else "raw"
    nodes.append(helper.make_node("Gemm", ["flat", "w", "bias"], [logits]))
    if broken == "nan":
        inits.append(numpy_helper.from_array(np.array([np.nan], dtype=np.float32), "nan"))
        nodes.append(helper.make_node("Mul", ["raw", "nan"], ["logits"]))
    elif broken == "nan_on_camera":
        # sqrt(0.1 - mean(input)) * 0: zero for a grey frame (normalised mean ~0), NaN for a brighter one (~0.2).
        inits += [
            numpy_helper.from_array(np.array(0.1, dtype=np.float32), "limit"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ]
        nodes += [
            helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
            helper.make_node("Sub", ["limit", "mean"], ["room"]),
            helper.make_node("Sqrt", ["room"], ["root"]),
            helper.make_node("Mul", ["root", "zero"], ["zeroed"]),
            helper.make_node("Add", ["raw", "zeroed"], ["logits"]),
        ]
    elif broken == "slow":
        nodes += _slow_chain(resolution, inits)
        nodes.append(helper.make_node("Add", ["raw", "zeroed"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        f"tiny{resolution}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, resolution, resolution])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, outputs])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _slow_chain(resolution: int, inits: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """MatMuls that depend on the input (so ORT cannot fold them away) and contribute exactly zero."""
    inits += [
        numpy_helper.from_array(np.array([3 * resolution, resolution], dtype=np.int64), "mat_shape"),
        numpy_helper.from_array(np.eye(resolution, dtype=np.float32), "eye"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    nodes = [helper.make_node("Reshape", ["input", "mat_shape"], ["m0"])]
    for i in range(SLOW_MATMULS):
        nodes.append(helper.make_node("MatMul", [f"m{i}", "eye"], [f"m{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"m{SLOW_MATMULS}"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["zeroed"]),
    ]
    return nodes


def make_key(path: Path) -> Path:
    """A fresh Ed25519 key pair: private key at ``path``, public key returned (``path.pub``)."""
    return generate_keypair(path)


def make_keys(directory: Path) -> tuple[Path, Path, Path]:
    """(a trusted private key, its public key, another private key that nobody trusts) in ``directory``."""
    pub = make_key(directory / "trusted.pem")
    make_key(directory / "rogue.pem")
    return directory / "trusted.pem", pub, directory / "rogue.pem"


def make_tiny_bundle(
    dir: Path,
    *,
    version: str = "1.0.0",
    resolutions: tuple[int, ...] = (224, 192, 160),
    num_classes: int = 10,
    key: Path | None = None,
    precision: str = "int8",
    broken: str | None = None,
    serial: int = 0,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """Write a complete bundle directory at ``dir`` (created) and return it; sign it with ``key`` if given.

    ``precision`` is ``int8``, ``fp32`` or ``both`` (INT8 and FP32 files from the same weights). ``serial`` is the
    manifest's (0: none written); ``extra`` files are written and listed in the manifest too.

    ``key`` is the private key file (see ``make_key``). Pack it with ``edge_node.bundle.archive.pack``.
    """
    if broken is not None and broken not in BROKEN:
        raise ValueError(f"broken must be one of {BROKEN}, not {broken!r}")
    dir.mkdir(parents=True, exist_ok=True)
    variants = []
    for prec in ("int8", "fp32") if precision == "both" else (precision,):
        for res in resolutions:
            name = f"tiny_{prec}_{res}.onnx"
            path = dir / name
            if broken == "not_onnx":
                path.write_bytes(np.random.default_rng(res).bytes(2048))
            else:
                model = tiny_model(res, num_classes, precision=prec, seed=_seed(version, res), broken=broken)
                path.write_bytes(model.SerializeToString())
            variants.append(Variant(resolution=res, precision=prec, file=name))
    count = num_classes - 1 if broken == "labels" else num_classes
    (dir / "labels.txt").write_text("".join(f"class_{i:03d}\n" for i in range(count)))
    for name, data in (extra or {}).items():
        (dir / name).write_bytes(data)
    files = {name: file_digest(dir / name) for name in [*(v.file for v in variants), "labels.txt", *(extra or {})]}
    manifest = Manifest(
        name="tiny",
        version=version,
        serial=serial,
        arch="tiny-gap-gemm",
        precision="int8" if precision == "both" else precision,
        num_classes=num_classes,
        preprocess=Preprocess(),
        variants=variants,
        files=files,
        build=BuildInfo(created=datetime.now(UTC).isoformat(timespec="seconds"), weights="random"),
    )
    (dir / MANIFEST).write_bytes(manifest.to_bytes())
    if broken == "hash":
        with (dir / variants[0].file).open("ab") as fh:
            fh.write(b"\0")
    if key is not None:
        sign_bundle(dir, load_private_key(key))
    return dir


def resigned(src: Path, dest: Path, version: str, key: Path) -> Path:
    """A copy of the bundle ``src`` at ``dest`` (created) with its version changed and signed with ``key``."""
    shutil.copytree(src, dest)
    manifest = open_bundle(dest).manifest.model_copy(update={"version": version})
    (dest / MANIFEST).write_bytes(manifest.to_bytes())
    (dest / SIGNATURE).unlink(missing_ok=True)
    sign_bundle(dest, load_private_key(key))
    return dest
