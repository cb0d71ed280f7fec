"""The figures: drawn from arrays, returned unwritten, and independent of the report that uses
them."""

from __future__ import annotations

import ast

import numpy as np

from budgetnet.evaluation.figures import (
    ANNOTATE_UP_TO,
    confusion_figure,
    history_figure,
    misclassified_figure,
)

from conftest import REPO

FIGURES = REPO / "code" / "budgetnet" / "evaluation" / "figures.py"


def test_figures_do_not_import_the_report():
    """The report draws its figures with this module: an import back would be a circle (even
    one hidden under TYPE_CHECKING, or inside a function)."""
    tree = ast.parse(FIGURES.read_text())
    imported = {
        name
        for node in ast.walk(tree)
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert not {name for name in imported if name.startswith("budgetnet.evaluation.report")}
    assert "budgetnet.evaluation" not in imported  # nor `from budgetnet.evaluation import report`


def test_the_gallery_shows_the_most_confident_mistakes_first():
    labels = np.array([0, 0, 1, 1, 2])
    probs = np.array(
        [
            [0.9, 0.1, 0.0],  # right
            [0.3, 0.7, 0.0],  # wrong, 0.7
            [0.1, 0.9, 0.0],  # right
            [0.95, 0.05, 0.0],  # wrong, 0.95
            [0.4, 0.0, 0.6],  # right
        ]
    )
    images = np.zeros((5, 4, 4, 3), np.uint8)
    figure = misclassified_figure(images, labels, probs, ["a", "b", "c"], count=1)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == ["true b\npred a 95%"]
    assert figure.get_suptitle() == "2 misclassified of 5; the 1 most confident mistakes"
    everything_right = misclassified_figure(images[:1], labels[:1], probs[:1], ["a", "b", "c"])
    assert everything_right.get_suptitle() == "no misclassified images"


def test_confusion_counts_are_written_only_while_legible():
    small = np.array([[3, 1], [0, 4]])
    ax = confusion_figure(small, ["a", "b"]).axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "3", "4"]
    assert ax.get_title() == "Confusion matrix (8 images)"
    many = ANNOTATE_UP_TO + 1
    crowded = confusion_figure(np.eye(many, dtype=int), [str(i) for i in range(many)])
    assert not crowded.axes[0].texts


def test_a_history_column_never_filled_is_left_out():
    rows = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": None} for e in range(3)]
    series = [("train_loss", "train"), ("val_loss", "val")]
    ax = history_figure(rows, "Loss", "loss", series).axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["train"]
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 3]  # epochs counted from 1
