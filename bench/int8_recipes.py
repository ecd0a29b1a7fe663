"""EfficientNet-Lite0 INT8 recipes for both runtimes: accuracy and FP32 agreement on held-out images, on any CPU.

Two steps, so that the slow one can run under emulation (docs/quantization.md, "INT8 on x86 without VNNI"):

    # natively, once: FP32 files (ONNX and TFLite), the INT8 variants, held-out tensors and FP32 answers
    PYTHONPATH=. nice .venv/bin/python bench/int8_recipes.py prepare /tmp/int8 [--images ../shared/imagenet-sample]
        [--resolutions 224,192,160] [--variants onnx:shipped,litert:shipped,...]
    # on the CPU to measure (natively, or under qemu-x86_64 -cpu Haswell for x86 without VNNI)
    PYTHONPATH=. .venv/bin/python bench/int8_recipes.py eval /tmp/int8 [--limit 150] [--threads 1] [--tag avx2]

``prepare`` calibrates on the sample's calibration split (``sha256(name) % 5 == 0``, 100 images) through the
node's Preprocessor, exactly as ``model build`` does, and keeps the other labelled images (393) as tensors.
FP32 answers are computed natively and reused by ``eval``: FP32 top-1 does not depend on INT8 kernels, and
running the FP32 files under emulation would take hours. ``eval`` prints one row per INT8 file: top-1, its
difference to FP32 and the top-1 agreement with FP32; ``--tag`` saves the predictions for later comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_node.runtimes import Runtime, open_session

if TYPE_CHECKING:
    from edge_node.bundle.manifest import Layout
    from edge_node.modelzoo.litert_export import LiteRTRecipe
    from edge_node.modelzoo.quantize import QuantRecipe

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "imagenet-sample"
ARCH = "efficientnet_lite0"


def _variants() -> dict[str, QuantRecipe | LiteRTRecipe]:
    """Named recipes: ``onnx:*`` for quantize_int8, ``litert:*`` for quantize_tflite."""
    from edge_node.modelzoo.litert_export import LiteRTRecipe, litert_recipe_for
    from edge_node.modelzoo.quantize import QuantRecipe, recipe_for

    shipped = recipe_for(ARCH)
    previous = QuantRecipe(method="Percentile", percentile=99.99, scopes_to_exclude=("blocks.0", "blocks.1"))
    blocks = ("blocks.0", "blocks.1")
    return {
        "onnx:shipped": shipped,
        "onnx:previous": previous,
        "onnx:reduce_range": dataclasses.replace(previous, reduce_range=True),
        "onnx:s8s8": dataclasses.replace(previous, activation_type="QInt8"),
        "onnx:u8u8": dataclasses.replace(previous, weight_type="QUInt8"),
        "onnx:stem_fc_fp32": dataclasses.replace(previous, exclude_stem=True, op_types_to_exclude=("Gemm",)),
        # issue 18 (x86 AVX2 without VNNI, native): variants tried against the v5 recipe's -0.6-point top-1 loss
        "onnx:pct9999": dataclasses.replace(shipped, percentile=99.99),  # the demo v5 recipe
        "onnx:head_fp32": dataclasses.replace(shipped, scopes_to_exclude=(*blocks, "bn2")),  # conv_head (BN folded)
        "onnx:blocks6_fp32": dataclasses.replace(shipped, scopes_to_exclude=(*blocks, "blocks.6")),
        "onnx:minmax": dataclasses.replace(shipped, method="MinMax"),
        "onnx:entropy": dataclasses.replace(shipped, method="Entropy"),
        "litert:shipped": litert_recipe_for(ARCH),
        "litert:plain": LiteRTRecipe(weight_only_ops=()),
        "litert:fc_weight_only": LiteRTRecipe(),
        "litert:blocks01": LiteRTRecipe(scopes_to_exclude=blocks),
    }


def prepare(args: argparse.Namespace) -> None:
    import torch

    from edge_node.modelzoo.archs import create_model, get_arch, preprocess_spec
    from edge_node.modelzoo.calibration import from_folder
    from edge_node.modelzoo.export import export_onnx
    from edge_node.modelzoo.images import load_bgr
    from edge_node.modelzoo.litert_export import export_tflite, quantize_tflite
    from edge_node.modelzoo.quantize import QuantRecipe, quantize_int8
    from edge_node.modelzoo.surgery import prepare_for_export
    from edge_node.modelzoo.weights import PYPI_LITE0, load_weights
    from edge_node.vision.preprocess import Preprocessor

    out: Path = args.dir
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    arch = get_arch(ARCH)
    model = create_model(arch)
    load_weights(model, arch, PYPI_LITE0, progress=False)
    model = prepare_for_export(model, ARCH).eval()
    spec = preprocess_spec(model)
    calibration = from_folder(args.images)
    np.save(out / "labels.npy", np.array([im.label for im in calibration.held_out]))
    variants = _variants()
    chosen = args.variants.split(",") if args.variants else list(variants)
    for r in args.resolutions:
        for runtime in ("onnxruntime", "litert"):
            kind = "onnx" if runtime == "onnxruntime" else "litert"
            names = [n for n in chosen if n.startswith(f"{kind}:")]
            if not names:
                continue
            layout: Layout = "NHWC" if runtime == "litert" else "NCHW"
            pre = Preprocessor(spec, r, layout=layout)
            calib = [np.array(pre(f), dtype=np.float32) for f in calibration.frames]
            held = np.concatenate([np.array(pre(load_bgr(im.path)), dtype=np.float32) for im in calibration.held_out])
            np.save(out / f"held_{kind}_{r}.npy", held)
            fp32 = out / f"fp32_{r}.{'onnx' if kind == 'onnx' else 'tflite'}"
            (export_onnx if kind == "onnx" else export_tflite)(model, r, fp32)
            session = open_session(fp32, runtime, threads=args.threads)
            np.save(out / f"fp32top_{kind}_{r}.npy", np.array([session.run(x[None]).argmax() for x in held]))
            for name in names:
                path = out / f"{name.replace(':', '_')}_{r}.{fp32.suffix[1:]}"
                started = time.perf_counter()
                recipe = variants[name]  # onnx:* names hold a QuantRecipe, litert:* a LiteRTRecipe
                if isinstance(recipe, QuantRecipe):
                    quantize_int8(fp32, path, calib, arch=ARCH, recipe=recipe)
                else:
                    quantize_tflite(fp32, path, calib, arch=ARCH, recipe=recipe)
                print(f"{r}px {name}: {path.name} in {time.perf_counter() - started:.0f} s", flush=True)


def evaluate(args: argparse.Namespace) -> None:
    d: Path = args.dir
    labels = np.load(d / "labels.npy")[: args.limit]
    rows = []
    print(f"CPU as seen by this process: {platform.machine()}; {len(labels)} held-out images, {args.threads} thread(s)")
    for path in sorted(d.glob("*_*.*")):
        kind, _, rest = path.stem.partition("_")
        if kind not in ("onnx", "litert") or path.suffix not in (".onnx", ".tflite"):
            continue
        name, r = rest.rsplit("_", 1)
        runtime: Runtime = "onnxruntime" if kind == "onnx" else "litert"
        x = np.load(d / f"held_{kind}_{r}.npy")[: args.limit]
        ref = np.load(d / f"fp32top_{kind}_{r}.npy")[: args.limit]
        session = open_session(path, runtime, threads=args.threads)
        started = time.perf_counter()
        top = np.array([session.run(t[None]).argmax() for t in x])
        if args.tag:
            np.save(d / f"top_{path.stem}_{args.tag}.npy", top)
        fp32_top1, top1 = float(np.mean(ref == labels)), float(np.mean(top == labels))
        agreement, seconds = float(np.mean(top == ref)), time.perf_counter() - started
        rows.append(
            {
                "file": path.name,
                "runtime": runtime,
                "recipe": name,
                "resolution": int(r),
                "fp32_top1": fp32_top1,
                "top1": top1,
                "agreement": agreement,
                "seconds": seconds,
            }
        )
        print(
            f"{r}px {kind:6s} {name:16s} top-1 {top1 * 100:6.2f} ({(top1 - fp32_top1) * 100:+.2f}) "
            f"agreement {agreement * 100:6.2f} %  [{seconds:.0f} s]",
            flush=True,
        )
    if args.json:
        print(json.dumps(rows, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir", type=Path)
    p.add_argument("--images", type=Path, default=SAMPLE)
    p.add_argument("--resolutions", type=lambda s: [int(v) for v in s.split(",")], default=[224, 192, 160])
    p.add_argument("--variants", help="comma-separated names (default: all), e.g. onnx:shipped,litert:shipped")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(run=prepare)
    e = sub.add_parser("eval")
    e.add_argument("dir", type=Path)
    e.add_argument("--limit", type=int, help="first N held-out images only")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--tag", help="save each file's predictions as top_<file>_<tag>.npy")
    e.add_argument("--json", action="store_true")
    e.set_defaults(run=evaluate)
    args = ap.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
