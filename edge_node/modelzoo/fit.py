"""Training loops on cached inputs: class-weighted loss, AdamW, early stopping on the validation loss.

The same loop trains the head alone (on pooled features) and fine-tunes the last stage(s) with it (on the
cached trunk output). Batch norm statistics stay frozen (eval mode): a few hundred photos are too few to
re-estimate them, and the node runs the model in eval mode anyway. The best epoch's weights are restored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from edge_node.modelzoo.classmetrics import balanced_accuracy, confusion_matrix
from edge_node.modelzoo.progress import step_progress

__all__ = ["Balance", "EpochLog", "FitOptions", "FitResult", "class_weights", "fit", "predict"]

Balance = Literal["none", "sqrt", "full"]


@dataclass(frozen=True)
class FitOptions:
    epochs: int = 100  # at most
    patience: int = 10  # epochs without a lower validation loss before stopping
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    balance: Balance = "sqrt"
    seed: int = 0

    def describe(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class EpochLog:
    epoch: int
    train_loss: float
    val_loss: float
    val_top1: float
    val_balanced: float | None


@dataclass(frozen=True)
class FitResult:
    best: EpochLog
    history: list[EpochLog]
    stopped_early: bool

    def describe(self) -> dict[str, object]:
        return {
            "epochs_run": len(self.history),
            "best_epoch": self.best.epoch,
            "stopped_early": self.stopped_early,
            "val_loss": round(self.best.val_loss, 5),
            "val_top1": round(self.best.val_top1, 5),
            "val_balanced_accuracy": None if self.best.val_balanced is None else round(self.best.val_balanced, 5),
        }


def class_weights(labels: npt.NDArray[np.int64], num_classes: int, balance: Balance) -> torch.Tensor:
    """Loss weight per class, mean 1 over the training images: none, 1/sqrt(count) or 1/count.

    ``full`` equalises the classes completely, which over-predicts rare classes when one class is a
    catch-all ("other", "empty"): ``sqrt`` is the default (docs/custom-models.md has the figures).
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    power = {"none": 0.0, "sqrt": 0.5, "full": 1.0}[balance]
    weights = np.where(counts > 0, np.maximum(counts, 1.0) ** -power, 0.0)
    weights *= len(labels) / float(np.sum(weights * counts))
    return torch.tensor(weights, dtype=torch.float32)


def fit(
    forward: Callable[[torch.Tensor], torch.Tensor],
    params: Sequence[nn.Parameter],
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    options: FitOptions,
    *,
    what: str,
    progress: bool = True,
) -> FitResult:
    """Train ``params`` so that ``forward(x)`` predicts the labels; restore the epoch with the lowest val loss.

    ``x`` may be float16 (the cache's storage type); batches are converted to float32 here.
    """
    x, y = train
    weights = class_weights(y.numpy(), num_classes, options.balance)
    train_loss = nn.CrossEntropyLoss(weight=weights, label_smoothing=options.label_smoothing)
    val_loss = nn.CrossEntropyLoss(weight=weights)
    optimiser = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    generator = torch.Generator().manual_seed(options.seed)
    history: list[EpochLog] = []
    best: EpochLog | None = None
    best_state = [p.detach().clone() for p in params]
    with step_progress(progress) as bar:
        task = bar.add_task(what, total=options.epochs)
        for epoch in range(1, options.epochs + 1):
            order = torch.randperm(len(y), generator=generator)
            total = 0.0
            for start in range(0, len(y), options.batch_size):
                batch = order[start : start + options.batch_size]
                optimiser.zero_grad(set_to_none=True)
                loss = train_loss(forward(x[batch].float()), y[batch])
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(batch)
            logits = predict(forward, val[0])
            log = _epoch_log(epoch, total / len(y), float(val_loss(logits, val[1])), logits, val[1], num_classes)
            history.append(log)
            if best is None or log.val_loss < best.val_loss:
                best = log
                best_state = [p.detach().clone() for p in params]
            bar.update(
                task,
                advance=1,
                description=f"{what}: epoch {epoch} val loss {log.val_loss:.3f} top-1 {log.val_top1:.1%}",
            )
            if epoch - best.epoch >= options.patience:
                bar.update(task, total=epoch)
                break
    assert best is not None
    with torch.no_grad():
        for p, saved in zip(params, best_state, strict=True):
            p.copy_(saved)
    return FitResult(best=best, history=history, stopped_early=len(history) < options.epochs)


def predict(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits for every row of ``x``, without gradients."""
    with torch.no_grad():
        return torch.cat([forward(x[i : i + batch_size].float()) for i in range(0, len(x), batch_size)])


def _epoch_log(
    epoch: int, train_loss: float, val_loss: float, logits: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> EpochLog:
    predicted = logits.argmax(dim=1).numpy()
    truth = labels.numpy()
    return EpochLog(
        epoch=epoch,
        train_loss=train_loss,
        val_loss=val_loss,
        val_top1=float(np.mean(predicted == truth)),
        val_balanced=balanced_accuracy(confusion_matrix(truth, predicted, num_classes)),
    )
