"""Deliberately degraded INT8 files, for the divergence gate's power test and bench/int8_gate_power.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["degrade_activation_ranges"]


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
