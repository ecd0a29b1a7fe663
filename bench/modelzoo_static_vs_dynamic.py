"""Static per-resolution ONNX files vs one dynamic-shape file: latency and correctness, measured in one run.

Run: PYTHONPATH=. nice .venv/bin/python bench/modelzoo_static_vs_dynamic.py [--arch efficientnet_lite0] [--runs 60]
Prints, per resolution, the median latency of each (interleaved runs, same thread count) and the ratio.
The decision it informs is written up in docs/model-bundles.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edge_node.modelzoo.archs import create_model, get_arch
from edge_node.modelzoo.export import INPUT_NAME, OUTPUT_NAME, export_onnx, torch_logits
from edge_node.modelzoo.weights import PYPI_LITE0, load_weights
from edge_node.runtimes import open_session


def _export_dynamic(model: torch.nn.Module, out: Path) -> None:
    side = torch.export.Dim("side", min=96, max=512)
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 224, 224),),
            str(out),
            dynamo=True,
            external_data=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {2: side, 3: side}},
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    arch = get_arch(args.arch)
    model = create_model(arch)
    load_weights(model, arch, PYPI_LITE0 if arch.name == "efficientnet_lite0" else "random")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        dynamic = Path(tmp) / "dynamic.onnx"
        t0 = time.perf_counter()
        _export_dynamic(model, dynamic)
        print(f"dynamic export {time.perf_counter() - t0:.1f}s, {dynamic.stat().st_size / 1e6:.2f} MB")
        dyn = open_session(dynamic, "onnxruntime", threads=args.threads)
        for r in (224, 192, 160):
            static = export_onnx(model, r, Path(tmp) / f"static_{r}.onnx")
            sta = open_session(static, "onnxruntime", threads=args.threads)
            x = rng.standard_normal((1, 3, r, r)).astype(np.float32)
            ref = torch_logits(model, [x])
            diffs = [float(np.abs(s.run(x) - ref).max()) for s in (sta, dyn)]
            times: dict[str, list[float]] = {"static": [], "dynamic": []}
            for _ in range(5):
                sta.run(x), dyn.run(x)
            for _ in range(args.runs):
                for name, s in (("static", sta), ("dynamic", dyn)):
                    start = time.perf_counter()
                    s.run(x)
                    times[name].append((time.perf_counter() - start) * 1000)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(
                f"{r}px: static {med['static']:.1f} ms, dynamic {med['dynamic']:.1f} ms, "
                f"dynamic/static {med['dynamic'] / med['static']:.2f}; max|diff| vs torch static {diffs[0]:.2g} "
                f"dynamic {diffs[1]:.2g}; static file {static.stat().st_size / 1e6:.2f} MB"
            )


if __name__ == "__main__":
    main()
