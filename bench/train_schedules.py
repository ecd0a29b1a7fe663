"""``model train``'s defaults, measured: trunk speed (ONNX Runtime vs eager PyTorch), then augmented views, class
weighting and fine-tuning compared on one feature cache of the coarse dataset (tests/support/coarse.py).

Run: PYTHONPATH=. nice .venv/bin/python -m bench.train_schedules [--sample ../shared/imagenet-sample]
     [--no-finetune] [--without-other]
Prints one line per schedule: validation top-1, balanced accuracy (mean recall), recall per class, the epoch
the early stopping kept and the seconds the head (or fine-tuning) took. docs/custom-models.md quotes it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np
import numpy.typing as npt
import torch

from edge_node.modelzoo.archs import create_model, get_arch, preprocess_spec
from edge_node.modelzoo.backbone import Split, split_model
from edge_node.modelzoo.classmetrics import balanced_accuracy, class_stats, confusion_matrix
from edge_node.modelzoo.dataset import Dataset, load_dataset
from edge_node.modelzoo.features import FeatureCache, export_feature_net, extract
from edge_node.modelzoo.fit import Balance, FitOptions, fit, predict
from edge_node.modelzoo.images import load_bgr
from edge_node.modelzoo.runtime import session
from edge_node.modelzoo.train import TrainOptions, photo_views, preprocessed
from edge_node.modelzoo.weights import PYPI_LITE0, load_weights
from edge_node.vision.preprocess import Preprocessor
from tests.support.coarse import make_coarse_dataset

MAX_VIEWS = 4
BALANCES: tuple[Balance, ...] = ("none", "sqrt", "full")


class Run(TypedDict):
    """One schedule: the keyword arguments of ``_schedule``."""

    views: int
    balance: Balance
    finetune: NotRequired[int]
    lr: NotRequired[float]


def _trunk_speed(split: Split, net: Path, x: np.ndarray, seconds: float = 5.0) -> tuple[float, float]:
    """(ORT ms per image at batch 1, eager PyTorch ms per image at batch 16), interleaved."""
    sess = session(net, threads=2)
    feed = {sess.get_inputs()[0].name: x}
    batch = torch.from_numpy(np.repeat(x, 16, axis=0))
    ort_ms, torch_ms = [], []
    deadline = time.monotonic() + seconds
    with torch.no_grad():
        split.features(split.trunk(batch))  # warm-up (oneDNN primitives)
        while time.monotonic() < deadline:
            start = time.perf_counter()
            for _ in range(16):
                sess.run(None, feed)
            ort_ms.append((time.perf_counter() - start) * 1000 / 16)
            start = time.perf_counter()
            split.features(split.trunk(batch))
            torch_ms.append((time.perf_counter() - start) * 1000 / 16)
    return statistics.median(ort_ms), statistics.median(torch_ms)


def _schedule(
    split: Split,
    train: FeatureCache,
    val: FeatureCache,
    classes: int,
    *,
    views: int,
    balance: Balance,
    finetune: int = 0,
    lr: float = 1e-3,
) -> str:
    keep = (np.arange(len(train)) % (1 + MAX_VIEWS)) <= views  # views come clean first, then augmented
    y = torch.from_numpy(train.labels[keep])
    yv = torch.from_numpy(val.labels)
    head = split.head()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    started = time.monotonic()
    options = FitOptions(balance=balance, lr=lr)
    result = fit(
        head,
        list(head.parameters()),
        (torch.from_numpy(train.features[keep]), y),
        (torch.from_numpy(val.features), yv),
        classes,
        options,
        what="head",
        progress=False,
    )
    forward: torch.nn.Module = head
    inputs: npt.NDArray[Any] = val.features  # the head's inputs, or the fine-tuned tail's (float16 stage)
    stopped = f"head {result.best.epoch}/{len(result.history)}"
    if finetune:
        assert train.stage is not None and val.stage is not None
        tuned = fit(
            split.tail,
            split.tail_parameters(),
            (torch.from_numpy(train.stage[keep]), y),
            (torch.from_numpy(val.stage), yv),
            classes,
            FitOptions(epochs=finetune, patience=3, batch_size=32, lr=1e-4, balance=balance),
            what="fine-tune",
            progress=False,
        )
        forward, inputs = split.tail, val.stage
        stopped += f", fine-tune {tuned.best.epoch}/{len(tuned.history)}"
    seconds = time.monotonic() - started
    predicted = predict(forward, torch.from_numpy(inputs)).argmax(dim=1).numpy()
    m = confusion_matrix(val.labels, predicted, classes)
    recalls = " ".join(f"{s.recall:.2f}" if s.recall is not None else "-" for s in class_stats(m))
    return (
        f"views={views} balance={balance:<4} finetune={finetune} lr={lr:g}: top-1 {np.trace(m) / m.sum():.3f} "
        f"balanced {balanced_accuracy(m):.3f} recall [{recalls}] epochs kept {stopped}, {seconds:.1f} s"
    )


def main(sample: Path, finetune: bool, with_other: bool) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        dataset: Dataset = load_dataset(make_coarse_dataset(sample, Path(tmp) / "coarse", with_other=with_other))
        classes = len(dataset.classes)
        arch = get_arch("efficientnet_lite0")
        model = create_model(arch, num_classes=classes)
        load_weights(model, arch, PYPI_LITE0, skip_head=True)
        preprocess = Preprocessor(preprocess_spec(model), 224)
        split = split_model(model, 1)
        options = TrainOptions(progress=False)
        check = preprocessed(preprocess, load_bgr(dataset.train[0].path, frame_side=options.frame_side))
        net = export_feature_net(split, 224, Path(tmp) / "trunk.onnx", [check])
        ort_ms, torch_ms = _trunk_speed(split, net, check)
        print(
            f"trunk + pooling at 224 px: ONNX Runtime {ort_ms:.1f} ms/image (batch 1, 2 threads), "
            f"eager PyTorch {torch_ms:.1f} ms/image (batch 16, 2 threads): {torch_ms / ort_ms:.1f}x"
        )
        started = time.monotonic()
        train = extract(
            net,
            photo_views(dataset.train, preprocess, options, views=MAX_VIEWS),
            total=len(dataset.train) * (1 + MAX_VIEWS),
            keep_stage=finetune,
            threads=2,
            progress=False,
            what="train",
        )
        val = extract(
            net,
            photo_views(dataset.val, preprocess, options, views=0),
            total=len(dataset.val),
            keep_stage=finetune,
            threads=2,
            progress=False,
            what="val",
        )
        print(
            f"{dataset.root.name}: classes {list(dataset.classes)}, train {dataset.counts(dataset.train)}, "
            f"val {dataset.counts(dataset.val)}; {len(train) + len(val)} views extracted in "
            f"{time.monotonic() - started:.0f} s"
        )
        initial = copy.deepcopy(split.tail.state_dict())
        runs: list[Run] = [{"views": v, "balance": b} for v in (0, 2, MAX_VIEWS) for b in BALANCES]
        runs.append({"views": MAX_VIEWS, "balance": "sqrt", "lr": 3e-3})
        if finetune:
            runs += [
                {"views": 2, "balance": "sqrt", "finetune": 5},
                {"views": MAX_VIEWS, "balance": "sqrt", "finetune": 5},
            ]
        for run in runs:
            split.tail.load_state_dict(initial)
            print(_schedule(split, train, val, classes, **run))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=Path, default=Path("../shared/imagenet-sample"))
    parser.add_argument("--no-finetune", action="store_true", help="skip the (slow) fine-tuning schedules")
    parser.add_argument("--without-other", action="store_true", help="the 4 coherent classes only")
    args = parser.parse_args()
    main(args.sample, not args.no_finetune, not args.without_other)
