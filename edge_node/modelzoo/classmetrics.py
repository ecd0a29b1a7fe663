"""Per-class accuracy figures from true and predicted class ids. Pure numpy.

Top-1 alone hides a class the model never gets right when that class is rare; the confusion matrix,
per-class precision/recall and the balanced accuracy (mean recall over the classes present) show it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["ClassStats", "balanced_accuracy", "class_stats", "confusion_matrix"]


@dataclass(frozen=True, slots=True)
class ClassStats:
    support: int  # images of this class
    predicted: int  # images predicted as this class
    correct: int

    @property
    def recall(self) -> float | None:
        return self.correct / self.support if self.support else None

    @property
    def precision(self) -> float | None:
        return self.correct / self.predicted if self.predicted else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        return None if p is None or r is None or p + r == 0 else 2 * p * r / (p + r)


def confusion_matrix(
    truth: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64], num_classes: int
) -> npt.NDArray[np.int64]:
    """``m[t, p]`` = images of class ``t`` predicted as ``p``."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (truth, predicted), 1)
    return m


def class_stats(confusion: npt.NDArray[np.int64]) -> list[ClassStats]:
    return [
        ClassStats(support=int(confusion[i].sum()), predicted=int(confusion[:, i].sum()), correct=int(confusion[i, i]))
        for i in range(len(confusion))
    ]


def balanced_accuracy(confusion: npt.NDArray[np.int64]) -> float | None:
    """Mean recall over the classes that have images (None without any)."""
    recalls = [s.recall for s in class_stats(confusion) if s.recall is not None]
    return float(np.mean(recalls)) if recalls else None
