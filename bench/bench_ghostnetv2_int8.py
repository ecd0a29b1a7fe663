"""GhostNetV2-1.0 at 224 px: FP32 vs INT8 on ONNX Runtime and LiteRT (XNNPACK), measured interleaved in one run.

Run: PYTHONPATH=. nice -n 10 .venv/bin/python bench/bench_ghostnetv2_int8.py [--threads 2] [--rounds 15]
     [--runs 20] [--profile] [--no-litert] [--images ../shared/imagenet-sample]

Models from one random-init timm ``ghostnetv2_100`` (seed 0; BatchNorm statistics re-estimated on
real photos when the ImageNet sample is there, so activation ranges look like a trained net's):

* ``fp32-naive``: timm's module exported as is (dynamo exporter, as ``edge-node model build`` does);
* ``fp32``: after ``prepare_for_export`` (what a bundle ships as its FP32 ONNX file);
* ``int8-naive``: ``quantize_static`` defaults (QDQ, per-channel, MinMax) on ``fp32-naive``;
* ``int8``: ``quantize_int8`` on ``fp32`` (the bundle's INT8 ONNX file);
* ``tflite-fp32`` / ``tflite-int8``: the bundle's TFLite files (``model build --runtime litert``), run by
  LiteRT with XNNPACK (needs the ``export`` extra; ``--no-litert`` leaves them out).

Every model runs through ``edge_node.runtimes.open_session``, the node's own sessions. Each round runs every
model ``--runs`` times (batch 1, same thread count, same input) before moving to the next, so machine load
hits all of them alike; medians of all runs and their ratios are printed, among them the issue's bars: the
best INT8 against the shipped ORT FP32 file, and against the best FP32 of either runtime.
``--profile`` also prints ONNX Runtime's per-op-type kernel time of ``fp32`` and ``int8``.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from edge_node.bundle.manifest import Layout, Preprocess
from edge_node.modelzoo.export import export_onnx
from edge_node.modelzoo.images import load_bgr
from edge_node.modelzoo.quantize import quantize_int8
from edge_node.modelzoo.surgery import prepare_for_export
from edge_node.runtimes import Session, open_session
from edge_node.vision.preprocess import Preprocessor

ARCH = "ghostnetv2_100"
ort.set_default_logger_severity(3)  # the quantiser's own sessions warn about unused initialisers
SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "imagenet-sample"


def _tensors(folder: Path, resolution: int, count: int, offset: int, layout: Layout = "NCHW") -> list[np.ndarray]:
    files = sorted(folder.glob("*.JPEG"))[offset::5][:count]
    pre = Preprocessor(Preprocess(), resolution, layout=layout)
    return [np.array(pre(load_bgr(f)), dtype=np.float32) for f in files]


def _model(images: list[np.ndarray]) -> torch.nn.Module:
    """Random-init ghostnetv2_100; BN running stats re-estimated on ``images`` (if any)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(ARCH)
    if images:
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over all batches
        model.train()
        with torch.no_grad():
            batch = torch.from_numpy(np.concatenate(images))
            for chunk in torch.split(batch, 16):
                model(chunk)
    return model.eval()


def _naive_int8(fp32: Path, out: Path, calibration: list[np.ndarray]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped: its base class is Any
        def __init__(self) -> None:
            self.it = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {"input": x}

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)


def _session(path: Path, threads: int, profile: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _profile(path: Path, threads: int, x: np.ndarray, runs: int, workdir: Path) -> list[tuple[str, float]]:
    """Per-op-type kernel time (ms per inference) from ORT's profiler."""
    sess = _session(path, threads, profile=str(workdir / path.stem))
    name = sess.get_inputs()[0].name
    for _ in range(runs):
        sess.run(None, {name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    total: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"]
    return [(op, us / runs / 1000) for op, us in total.most_common()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--runs", type=int, default=20, help="runs per model per round")
    ap.add_argument("--images", type=Path, default=SAMPLE, help="photos for BN re-estimation and calibration")
    ap.add_argument("--calibration", type=int, default=32)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-litert", action="store_true", help="ONNX Runtime files only")
    args = ap.parse_args()

    r = args.resolution
    have_photos = args.images.is_dir()
    bn_images = _tensors(args.images, r, 64, offset=1) if have_photos else []
    if have_photos:
        calibration = _tensors(args.images, r, args.calibration, offset=0)
    else:  # no photos: noise calibration still gives valid (if unrealistic) ranges for a latency test
        rng = np.random.default_rng(0)
        calibration = [rng.standard_normal((1, 3, r, r), dtype=np.float32) for _ in range(args.calibration)]
    nhwc = [np.ascontiguousarray(x.transpose(0, 2, 3, 1)) for x in calibration]  # the same images, NHWC
    model = _model(bn_images)
    with tempfile.TemporaryDirectory(prefix="bench-ghostnetv2-") as tmp:
        work = Path(tmp)
        paths = {name: work / f"{name}.onnx" for name in ("fp32-naive", "fp32", "int8-naive", "int8")}
        export_onnx(model, r, paths["fp32-naive"])
        export_onnx(prepare_for_export(model, ARCH), r, paths["fp32"])
        _naive_int8(paths["fp32-naive"], paths["int8-naive"], calibration)
        recipe = quantize_int8(paths["fp32"], paths["int8"], calibration, arch=ARCH)
        litert_recipe: dict[str, object] = {}
        if not args.no_litert:
            from edge_node.modelzoo.litert_export import export_tflite, quantize_tflite

            paths["tflite-fp32"], paths["tflite-int8"] = work / "fp32.tflite", work / "int8.tflite"
            export_tflite(prepare_for_export(model, ARCH), r, paths["tflite-fp32"])
            litert_recipe = quantize_tflite(paths["tflite-fp32"], paths["tflite-int8"], nhwc, arch=ARCH)

        feeds = {name: nhwc[0] if name.startswith("tflite") else calibration[0] for name in paths}
        sessions: dict[str, Session] = {
            name: open_session(p, "litert" if name.startswith("tflite") else "onnxruntime", threads=args.threads)
            for name, p in paths.items()
        }
        for name, sess in sessions.items():  # warm-up: allocations, prepacking, thread pool start
            for _ in range(10):
                sess.run(feeds[name])
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, sess in sessions.items():
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    sess.run(feeds[name])
                    times[name].append((time.perf_counter() - t0) * 1e3)
        median = {name: statistics.median(t) for name, t in times.items()}
        print(f"ghostnetv2_100 {r}px, batch 1, {args.threads} threads, {args.rounds} rounds x {args.runs} runs")
        print(f"{'model':12s} {'median ms':>10s} {'p10 ms':>8s} {'size MB':>8s}")
        for name, t in times.items():
            size = paths[name].stat().st_size / 1e6
            print(f"{name:12s} {median[name]:10.3f} {float(np.percentile(t, 10)):8.3f} {size:8.2f}")
        print(f"speed-up int8 vs fp32 (shipped ORT pair):  {median['fp32'] / median['int8']:.2f}x")
        print(f"speed-up int8 vs fp32-naive:               {median['fp32-naive'] / median['int8']:.2f}x")
        print(f"speed-up int8-naive vs fp32-naive:         {median['fp32-naive'] / median['int8-naive']:.2f}x")
        best_int8 = min((n for n in median if n.endswith("int8")), key=median.__getitem__)
        best_fp32 = min((n for n in median if "fp32" in n), key=median.__getitem__)
        print(f"best INT8 ({best_int8}) vs shipped ORT FP32 (fp32): {median['fp32'] / median[best_int8]:.2f}x")
        print(f"best INT8 ({best_int8}) vs best FP32 ({best_fp32}): {median[best_fp32] / median[best_int8]:.2f}x")
        print(f"int8 recipe: {json.dumps(recipe, default=str)}")
        if litert_recipe:
            print(f"tflite-int8 recipe: {json.dumps(litert_recipe, default=str)}")
        if args.profile:
            for name in ("fp32", "int8"):
                print(f"\nORT profile of {name} (kernel ms per inference, by op type):")
                for op, ms in _profile(paths[name], args.threads, calibration[0], 100, work):
                    print(f"  {op:28s} {ms:7.3f}")


if __name__ == "__main__":
    main()
