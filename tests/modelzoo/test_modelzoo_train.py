"""The training building blocks with torch: the trunk/tail cut of every architecture, the fit loop, class weights,
checkpoints whose head does not match the labels, and a 3-class checkpoint built into a bundle that runs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_node.bundle import open_bundle
from edge_node.cli import main
from edge_node.errors import BundleError

pytest.importorskip("torch")
pytest.importorskip("timm")

import torch

from edge_node.modelzoo.archs import ARCHS, create_model, get_arch
from edge_node.modelzoo.backbone import split_model
from edge_node.modelzoo.fit import FitOptions, class_weights, fit, predict
from edge_node.modelzoo.images import load_bgr
from edge_node.modelzoo.weights import checkpoint_labels, load_state_strict
from edge_node.vision.model import Model

# One architecture per timm family in ARCHS (the others differ only in width)
FAMILIES = ("efficientnet_lite0", "ghostnet_100", "ghostnetv2_100", "mobilenetv3_small_100")


@pytest.mark.parametrize("arch", FAMILIES)
def test_tail_of_trunk_is_the_model(arch: str) -> None:
    """The cut is generic over timm's families: stem + first stages, then the rest, equals the whole model."""
    assert arch in ARCHS
    torch.manual_seed(0)
    model = create_model(get_arch(arch), num_classes=4)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        for stages in (1, 2):
            split = split_model(model, stages)
            h = split.trunk(x)
            torch.testing.assert_close(split.tail(h), want, rtol=1e-4, atol=1e-4)
            assert split.features(h).shape == (1, split.head().in_features)
    # the tail shares the model's modules: training it trains the model
    assert any(p is split.head().weight for p in split.tail_parameters())
    assert not {id(p) for p in split.trunk.parameters()} & {id(p) for p in split.tail_parameters()}
    with pytest.raises(BundleError, match="--finetune-stages must be between 1 and"):
        split_model(model, 0)


def test_class_weights_balance_counts() -> None:
    labels = np.array([0] * 100 + [1] * 25 + [2] * 1, dtype=np.int64)
    none, sqrt, full = (class_weights(labels, 4, b).numpy() for b in ("none", "sqrt", "full"))
    counts = np.array([100, 25, 1, 0])
    for w in (none, sqrt, full):
        assert float(np.sum(w * counts)) == pytest.approx(126.0, rel=1e-5)  # mean weight per image is 1
        assert w[3] == 0.0  # a class without training images has no loss term
    assert none[0] == pytest.approx(none[2])
    assert sqrt[1] / sqrt[0] == pytest.approx(2.0) and sqrt[2] / sqrt[0] == pytest.approx(10.0)
    assert full[1] / full[0] == pytest.approx(4.0) and full[2] / full[0] == pytest.approx(100.0)


def _clusters(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 16) * 3.0
    y = np.arange(n) % 3
    x = centres[y] + rng.normal(0.0, 1.0, (n, 16))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def test_fit_learns_stops_early_and_keeps_the_best_epoch() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 3)
    train, val = _clusters(90, 1), _clusters(45, 2)
    options = FitOptions(epochs=300, patience=5, lr=0.05, batch_size=16)
    result = fit(head, list(head.parameters()), train, val, 3, options, what="test", progress=False)
    assert result.stopped_early and len(result.history) == result.best.epoch + 5
    assert result.best.val_loss == min(e.val_loss for e in result.history)
    logits = predict(head, val[0])
    restored = torch.nn.functional.cross_entropy(logits, val[1], weight=class_weights(train[1].numpy(), 3, "sqrt"))
    assert float(restored) == pytest.approx(result.best.val_loss, rel=1e-5)  # the best epoch's weights are back
    assert result.best.val_top1 >= 0.9
    assert float((logits.argmax(1) == val[1]).float().mean()) == pytest.approx(result.best.val_top1)


def _state(arch: str, classes: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return dict(create_model(get_arch(arch), num_classes=classes).state_dict())


def test_a_head_that_does_not_match_the_labels_says_what_to_fix() -> None:
    model = create_model(get_arch("efficientnet_lite0"), num_classes=4)
    state = _state("efficientnet_lite0", 3)
    with pytest.raises(BundleError) as err:
        load_state_strict(model, state, labels_hint="the 4 lines of my.txt")
    message = str(err.value)
    assert "classifier.weight has shape (3, 1280), i.e. 3 classes, but the 4 lines of my.txt name 4" in message
    assert "exactly 3 lines" in message and "model train" in message
    # a different architecture is still reported as such, not as a labels problem
    with pytest.raises(BundleError, match="Is --arch the right architecture"):
        load_state_strict(model, _state("mobilenetv3_small_100", 4))
    # training keeps its own new head and takes everything else
    before = model.get_parameter("classifier.weight").detach().clone()
    load_state_strict(model, state, skip_head=True)
    torch.testing.assert_close(model.get_parameter("classifier.weight"), before)
    torch.testing.assert_close(model.get_parameter("conv_stem.weight"), state["conv_stem.weight"])


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(checkpoint with a 3-class head, its 3-line labels file, a 3-class image folder)."""
    work = tmp_path_factory.mktemp("three")
    state = _state("efficientnet_lite0", 3)
    checkpoint = work / "parcels.pt"
    torch.save({"state_dict": state, "labels": ["parcel", "empty", "cat"]}, checkpoint)
    bare = work / "bare.pth"
    torch.save(state, bare)
    labels = work / "labels.txt"
    labels.write_text("parcel\nempty\ncat\n")
    rng = np.random.default_rng(0)
    for name in ("parcel", "empty", "cat"):
        for i in range(4):
            frame = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
            (work / "photos" / name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(work / "photos" / name / f"IMG_{i}.jpg"), frame)
    return bare, labels, work / "photos"


@pytest.mark.slow
def test_a_three_class_checkpoint_builds_and_runs(
    three_classes: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare, labels, photos = three_classes
    out = tmp_path / "bundle"
    argv = ["model", "build", "--arch", "efficientnet_lite0", "--weights", str(bare), "--labels", str(labels)]
    argv += ["--calib", str(photos), "--resolutions", "64", "--out", str(out), "--version", "3.0", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    bundle = open_bundle(out)
    assert bundle.labels == ("parcel", "empty", "cat") and bundle.manifest.num_classes == 3
    assert (out / "labels.txt").read_text() == "parcel\nempty\ncat\n"
    assert bundle.manifest.build.weights == "file:bare.pth"
    for precision in ("fp32", "int8"):
        frame = load_bgr(next(photos.rglob("*.jpg")))
        variant = Model(bundle, precision=precision).build(64)
        result = variant.infer(0, variant.preprocessor(frame), 0.0)
        assert result.best.label in bundle.labels and bundle.labels[result.best.class_id] == result.best.label
        assert len(result.top_k) == 3
    capsys.readouterr()
    assert main(["model", "eval", str(out), "--images", str(photos), "--no-progress"]) == 0
    out_text = capsys.readouterr().out
    assert "per class" in out_text and "confusion matrix" in out_text and "parcel" in out_text


@pytest.mark.slow
def test_mismatched_label_counts_are_refused_before_anything_is_built(
    three_classes: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = three_classes[0]
    four = tmp_path / "four.txt"
    four.write_text("parcel\nempty\ncat\ndog\n")
    out = tmp_path / "bundle"
    argv = ["model", "build", "--arch", "efficientnet_lite0", "--weights", str(bare), "--labels", str(four)]
    assert main([*argv, "--resolutions", "64", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "classifier.weight has shape (3, 1280), i.e. 3 classes, but the 4 lines of" in err
    assert "Pass --labels with a file of exactly 3 lines" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [four]  # no half bundle, no staging left
    # ImageNet's 1000 labels by default: the same checkpoint without --labels
    argv = ["model", "build", "--arch", "efficientnet_lite0", "--weights", str(bare), "--resolutions", "64"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    assert "the 1000 ImageNet labels (no --labels given) name 1000" in capsys.readouterr().err


@pytest.mark.slow
def test_a_train_checkpoint_carries_its_labels(three_classes: tuple[Path, Path, Path], tmp_path: Path) -> None:
    bare, _, photos = three_classes
    checkpoint = bare.with_name("parcels.pt")
    assert checkpoint_labels(checkpoint) == ("parcel", "empty", "cat")
    assert checkpoint_labels(bare) is None
    out = tmp_path / "bundle"
    argv = ["model", "build", "--arch", "efficientnet_lite0", "--weights", str(checkpoint), "--precision", "fp32"]
    assert main([*argv, "--calib", str(photos), "--resolutions", "64", "--out", str(out), "--no-progress"]) == 0
    assert open_bundle(out).labels == ("parcel", "empty", "cat")


@pytest.mark.slow
def test_training_another_family_fine_tunes_only_the_last_stages(tmp_path: Path) -> None:
    """GhostNetV2 (random weights) through the whole train_model path with fine-tuning of its last 2 stages:
    the unmodified network exports for the feature cache, the tail trains and the trunk stays as it was."""
    from edge_node.modelzoo.dataset import load_dataset
    from edge_node.modelzoo.train import TrainOptions, train_model

    rng = np.random.default_rng(0)
    for c, name in enumerate(("dark", "mid", "light")):
        for i in range(5):
            pixels = np.full((90, 120, 3), 60 * (c + 1), np.uint8) + rng.integers(0, 30, (90, 120, 3), dtype=np.uint8)
            (tmp_path / name).mkdir(exist_ok=True)
            cv2.imwrite(str(tmp_path / name / f"{i}.jpg"), pixels)
    dataset = load_dataset(tmp_path)
    torch.manual_seed(0)
    reference = create_model(get_arch("ghostnetv2_100"), num_classes=3).state_dict()  # what weights="random" gives
    options = TrainOptions(
        arch="ghostnetv2_100",
        weights="random",
        views=1,
        head=FitOptions(epochs=3, lr=0.05),
        finetune_epochs=2,
        finetune_stages=2,
        progress=False,
    )
    trained = train_model(dataset, options, resolution=96)
    state = trained.model.state_dict()
    assert trained.finetune is not None and len(trained.finetune.history) == 2
    assert trained.confusion.sum() == len(dataset.val) == 3
    stages = trained.model.get_submodule("blocks")
    assert isinstance(stages, torch.nn.Sequential)
    blocks = len(stages)
    changed = {k.split(".")[1] for k in state if k.startswith("blocks.") and not torch.equal(state[k], reference[k])}
    assert changed and changed <= {str(blocks - 2), str(blocks - 1)}  # only the last two stages moved
    assert torch.equal(state["conv_stem.weight"], reference["conv_stem.weight"])
    assert not torch.equal(state["classifier.weight"], torch.zeros_like(state["classifier.weight"]))
    # the calibration set covers every class with clean training photos
    assert sorted({n.split("/")[0] for n in trained.calibration.names}) == ["dark", "light", "mid"]
