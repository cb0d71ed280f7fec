"""Every figure the project draws: training curves, the learning-rate range test, and the
evaluation report's confusion matrix, misclassified gallery, per-class accuracy and reliability
diagram.

Each function takes arrays (or a metric's value) and returns a `Figure`; which figures a report
or a run has, and where they go, is their caller's business, and `save_figure` writes one.
Drawn with matplotlib's object API (no pyplot), so nothing depends on a display or on global
state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from budgetnet.evaluation.metrics import Reliability
from budgetnet.files import atomic_write

GALLERY_SIZE = 36  # misclassified images shown, most confident mistakes first
ANNOTATE_UP_TO = 20  # classes; beyond this the confusion matrix's counts would not be legible
HISTORY_CURVES = {  # file name -> (title, y label, [(history column, legend)])
    "loss_curve.png": ("Loss", "cross-entropy", [("train_loss", "train"), ("val_loss", "val")]),
    "accuracy_curve.png": ("Accuracy", "accuracy", [("train_acc", "train"), ("val_acc", "val")]),
    "lr_curve.png": ("Learning rate (at the end of each epoch)", "learning rate", [("lr", "lr")]),
}


def save_figure(figure: Figure, path: str | Path) -> Path:
    """The figure as a PNG at `path`, written atomically (a reader never sees half of it)."""
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100, bbox_inches="tight")
    return Path(path)


# --------------------------------------------------------------------------------------------
# Training


def history_figure(
    rows: list[dict], title: str, ylabel: str, series: Sequence[tuple[str, str]]
) -> Figure:
    """History columns (`series`: (column, legend)) against the epoch; a column never filled
    in (no validation split) is left out."""
    epochs = [row["epoch"] + 1 for row in rows]
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    for column, label in series:
        values = [row.get(column) for row in rows]
        if any(v is not None for v in values):
            ax.plot(
                epochs,
                [float("nan") if v is None else v for v in values],
                label=label,
                marker="o" if len(rows) < 30 else None,
            )
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    return figure


def history_figures(rows: list[dict], title: str = "") -> dict[str, Figure]:
    """The loss, accuracy and learning-rate curves of a run's history, by file name
    (HISTORY_CURVES)."""
    return {
        name: history_figure(rows, f"{heading} {title}".strip(), ylabel, series)
        for name, (heading, ylabel, series) in HISTORY_CURVES.items()
    }


def write_history_plots(rows: list[dict], folder: str | Path, title: str = "") -> list[Path]:
    """`history_figures` as PNGs in `folder`; returns their paths."""
    figures = history_figures(rows, title)
    return [save_figure(figure, Path(folder) / name) for name, figure in figures.items()]


def lr_range_figure(
    lr: Sequence[float], loss: Sequence[float], smoothed: Sequence[float], suggested_lr: float
) -> Figure:
    """The training loss against the learning rate of a range test, raw and smoothed, with the
    suggested learning rate marked."""
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    ax.plot(lr, loss, alpha=0.3, label="loss")
    ax.plot(lr, smoothed, label="smoothed")
    ax.axvline(
        suggested_lr, color="k", linestyle="--", label=f"steepest descent {suggested_lr:.2g}"
    )
    ax.set(
        xscale="log",
        xlabel="learning rate (per batch)",
        ylabel="training loss",
        title="Learning-rate range test",
    )
    # The blow-up at the end would squash the part worth reading.
    top = min(max(smoothed), 3 * min(smoothed))
    ax.set_ylim(top=top + 0.1 * abs(top))
    ax.legend()
    ax.grid(alpha=0.3)
    return figure


# --------------------------------------------------------------------------------------------
# Evaluation


def confusion_figure(matrix: np.ndarray, classes: list[str]) -> Figure:
    """Counts, coloured by the share of each true class (row), so rare classes show too."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = max(6.0, 0.5 * len(classes))
    figure = Figure(figsize=(side + 1.5, side))
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, label="share of the true class")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=90)
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= ANNOTATE_UP_TO:
        for (row, col), count in np.ndenumerate(matrix):
            ax.text(
                col,
                row,
                str(count),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if shares[row, col] > 0.5 else "black",
            )
    ax.set_title(f"Confusion matrix ({matrix.sum()} images)")
    return figure


def misclassified_figure(
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    count: int = GALLERY_SIZE,
) -> Figure:
    """Up to `count` misclassified images, the most confident mistakes first."""
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    shown = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    columns = 6
    rows = max(1, -(-len(shown) // columns))
    figure = Figure(figsize=(2 * columns, 2.3 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, shown, strict=False):
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(
            f"true {classes[labels[i]]}\npred {classes[predicted[i]]} {100 * confidence[i]:.0f}%",
            fontsize=8,
        )
    figure.suptitle(
        f"{len(wrong)} misclassified of {len(labels)}; the {len(shown)} most confident mistakes"
        if len(wrong)
        else "no misclassified images"
    )
    return figure


def per_class_accuracy_figure(
    names: Sequence[str], recall: Sequence[float], accuracy: float
) -> Figure:
    """Each class's accuracy (its recall) as a bar, beside the overall `accuracy`."""
    figure = Figure(figsize=(8, max(3.0, 0.3 * len(names))))
    ax = figure.subplots()
    ax.barh(np.arange(len(names)), 100 * np.asarray(recall, dtype=float), color="tab:blue")
    ax.axvline(100 * accuracy, color="tab:red", linestyle="--")
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()  # the first class on top, as in the tables
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (recall) %")
    ax.set_title(f"Accuracy per class (dashed: overall, {100 * accuracy:.2f}%)")
    return figure


def reliability_figure(curve: Reliability) -> Figure:
    """Accuracy per confidence bin against the diagonal of perfect calibration."""
    bins = len(curve.count)
    edges = np.linspace(0, 1, bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, 1 / bins
    used = curve.count > 0
    figure = Figure(figsize=(6, 6))
    ax = figure.subplots()
    ax.bar(centres[used], curve.acc[used], width, edgecolor="black", label="accuracy")
    ax.bar(
        centres[used],
        curve.confidence[used] - curve.acc[used],
        width,
        bottom=curve.acc[used],
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left")
    ax.set_title(f"Reliability diagram, ECE {100 * curve.ece:.2f}% ({bins} bins)")
    return figure
