"""Metrics from class probabilities: the one place a number about predictions is computed.

Training's validation and test scores, the evaluation report and the corruption sweep all start
from probabilities (N, num_classes) and integer labels (N,), and all name their metrics with the
keys of `metrics()` (`acc` as in history.csv's `val_acc` and results.json's `test_acc_tta1`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15  # Guo et al. (2017)
# Top-5 accuracy is reported above this many classes: with CIFAR-10's ten, five guesses cover
# half of the classes and the number says little.
TOP5_ABOVE_CLASSES = 10


@dataclass
class Reliability:
    """Predictions binned by confidence (top probability) into equal-width bins (lo, hi]."""

    confidence: np.ndarray  # mean confidence per bin (0 where empty)
    acc: np.ndarray  # accuracy per bin (0 where empty)
    count: np.ndarray  # predictions per bin

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean |accuracy - confidence|."""
        return float((self.count * np.abs(self.acc - self.confidence)).sum() / self.count.sum())


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    seen = np.maximum(count, 1)
    return Reliability(
        np.bincount(index, confidence, bins) / seen, np.bincount(index, correct, bins) / seen, count
    )


def average_precisions(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One-vs-rest average precision per class; NaN for a class with no image in `labels`, and
    for every class when a probability is not finite (a diverged model still gets its accuracy
    and loss reported rather than an error)."""
    # scikit-learn is imported where it is used: it takes a second, and inference.py never
    # needs it.
    from sklearn.metrics import average_precision_score

    positives = np.eye(probs.shape[1], dtype=bool)[labels]
    present = positives.any(axis=0)
    out = np.full(probs.shape[1], np.nan)
    if present.any() and np.isfinite(probs).all():
        out[present] = average_precision_score(
            positives[:, present], probs[:, present], average=None
        )
    return out


def confusion_matrix(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """counts[true, predicted]."""
    classes = probs.shape[1]
    pairs = labels * classes + probs.argmax(axis=1)
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


def metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Cross-entropy `loss`, accuracy `acc`, above TOP5_ABOVE_CLASSES classes top-5 accuracy
    `top5`, macro mean average precision `macro_map` (over the classes present) and `ece`."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    picked = probs[np.arange(len(labels)), labels].astype(np.float64)
    out = {
        "loss": float(-np.log(np.maximum(picked, 1e-12)).mean()),
        "acc": float((probs.argmax(axis=1) == labels).mean()),
    }
    if probs.shape[1] > TOP5_ABOVE_CLASSES:
        top5 = np.argpartition(-probs, 4, axis=1)[:, :5]
        out["top5"] = float((top5 == labels[:, None]).any(axis=1).mean())
    precisions = average_precisions(probs, labels)
    known = ~np.isnan(precisions)
    out["macro_map"] = float(precisions[known].mean()) if known.any() else float("nan")
    out["ece"] = reliability(probs, labels).ece
    return out


@dataclass(frozen=True)
class ClassScore:
    """One class's row of the per-class table; `recall` is the class's accuracy."""

    name: str
    precision: float
    recall: float
    f1: float
    average_precision: float | None  # None: no image of the class was scored
    support: int  # images of the class


def per_class_metrics(
    probs: np.ndarray, labels: np.ndarray, classes: list[str]
) -> list[ClassScore]:
    """Precision, recall, F1, average precision and support of every class, in order."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, probs.argmax(axis=1), labels=np.arange(len(classes)), zero_division=0
    )
    ap = average_precisions(probs, labels)
    return [
        ClassScore(name, float(p), float(r), float(f), None if np.isnan(a) else float(a), int(s))
        for name, p, r, f, a, s in zip(classes, precision, recall, f1, ap, support, strict=True)
    ]
