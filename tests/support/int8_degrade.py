"""Deliberately degraded INT8 files, for the divergence gate's power test and bench/int8_gate_power.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["degrade_activation_ranges", "widen_reduced_weights"]


def degrade_activation_ranges(src: Path, out: Path, sigma: float, seed: int) -> Path:
    """Copy an ONNX QDQ file with every activation's quantisation scale multiplied by exp(sigma * N(0, 1)).

    One draw per activation tensor, seeded: the file a calibration on unrepresentative frames (or a broken
    kernel's saturation) would give. Weights are left as they are.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    done: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or node.input[1] in done:
            continue
        scale = inits[node.input[1]]
        value = numpy_helper.to_array(scale) * np.float32(np.exp(sigma * rng.standard_normal()))
        scale.CopyFrom(numpy_helper.from_array(value.astype(np.float32), scale.name))
        done.add(scale.name)
    onnx.save(model, str(out))
    return out


def widen_reduced_weights(src: Path, out: Path) -> Path:
    """Copy an ONNX QDQ file with its 7-bit weights (|q| <= 64, the recipe's ``reduce_range_dense``) widened to
    8 bits: q * 127/64 rounded, scale * 64/127.

    The dequantised weights stay what they were to within half an 8-bit step, so on CPUs whose INT8 kernels
    accumulate exactly (VNNI, ARM) the file answers as the 7-bit one does; on x86 with AVX2 and no VNNI ONNX
    Runtime's U8S8 kernels add u8*s8 pairs into a saturating int16 and the file loses accuracy: the real
    failure the gate exists for, made without a rebuild.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[0]])
        if weight.dtype != np.int8 or weight.ndim < 2 or int(np.abs(weight.astype(np.int16)).max()) > 64:
            continue
        scale = inits[node.input[1]]
        wide = np.clip(np.rint(weight.astype(np.float32) * (127 / 64)), -127, 127).astype(np.int8)
        inits[node.input[0]].CopyFrom(numpy_helper.from_array(wide, node.input[0]))
        value = numpy_helper.to_array(scale).astype(np.float32) * np.float32(64 / 127)
        scale.CopyFrom(numpy_helper.from_array(value, scale.name))
    onnx.save(model, str(out))
    return out
