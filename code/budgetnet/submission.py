"""Kaggle submission files `ID,Labels`: write one atomically, check one, score one against a key.

An answer key has the same format as a submission, so one reader serves both.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from budgetnet.errors import UserError
from budgetnet.files import atomic_write

HEADER = ("ID", "Labels")
_INTEGER = re.compile(r"-?\d+")


def write_submission(path: str | Path, ids: np.ndarray, labels: np.ndarray) -> Path:
    """Rows `ID,Labels` with the ids exactly as given, in their order, and integer labels."""
    ids, labels = np.asarray(ids), np.asarray(labels)
    if ids.shape != labels.shape or ids.ndim != 1:
        raise ValueError(f"ids {ids.shape} and labels {labels.shape} must be equal 1-D shapes")
    if ids.dtype.kind not in "iu" or labels.dtype.kind not in "iu":
        raise ValueError(f"ids ({ids.dtype}) and labels ({labels.dtype}) must be integers")
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(zip(ids.tolist(), labels.tolist(), strict=True))
    return Path(path)


def read_submission(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) of a submission or answer key, refusing anything that is not `ID,Labels`
    followed by rows of two integers."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # tolerate Excel's BOM
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read as CSV ({exc})") from None
    if not rows:
        raise UserError(f"{path}: empty file, expected the header {','.join(HEADER)}")
    if tuple(c.strip() for c in rows[0]) != HEADER:
        raise UserError(f"{path}: header is {','.join(rows[0])!r}, expected {','.join(HEADER)!r}")
    body = [row for row in rows[1:] if row]  # a trailing blank line is harmless
    for line, row in enumerate(body, start=2):
        if len(row) != 2 or not all(_INTEGER.fullmatch(c.strip()) for c in row):
            raise UserError(
                f"{path}: line {line} is {','.join(row)!r}, expected two integers ID,Labels"
            )
    if not body:
        raise UserError(f"{path}: has a header but no rows")
    values = np.array([[int(c) for c in row] for row in body], dtype=np.int64)
    return values[:, 0], values[:, 1]


@dataclass
class CheckedSubmission:
    ids: np.ndarray
    labels: np.ndarray

    def summary(self, num_classes: int) -> str:
        counts = np.bincount(self.labels, minlength=num_classes).tolist()
        return f"{len(self.ids)} rows; predictions per class " + " ".join(
            f"{c}:{n}" for c, n in enumerate(counts)
        )


def _examples(values) -> str:
    return ", ".join(str(v) for v in sorted(values)[:5])


def check_submission(
    path: str | Path, expected_ids: np.ndarray, num_classes: int | None = 10
) -> CheckedSubmission:
    """Check a submission against the ids it must cover: header, row count, each id once and
    no other, labels in 0..num_classes-1 (None: any integer). Raises UserError naming the
    first problem."""
    path = Path(path)
    ids, labels = read_submission(path)
    if len(ids) != len(expected_ids):
        raise UserError(f"{path}: {len(ids)} rows, expected {len(expected_ids)}")
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        raise UserError(f"{path}: duplicate ids, e.g. {_examples(unique[counts > 1])}")
    missing = np.setdiff1d(expected_ids, ids)
    if len(missing):
        extra = np.setdiff1d(ids, expected_ids)
        raise UserError(
            f"{path}: {len(missing)} ids of the test set are missing (e.g. "
            f"{_examples(missing)}) and {len(extra)} are not in it (e.g. "
            f"{_examples(extra)})"
        )
    if num_classes is not None:
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if len(bad):
            raise UserError(
                f"{path}: {len(bad)} labels outside 0..{num_classes - 1}, e.g. "
                f"{_examples(set(bad.tolist()))}"
            )
    return CheckedSubmission(ids, labels)


def score_submission(path: str | Path, key_path: str | Path) -> tuple[float, int, int]:
    """Accuracy of a submission against an answer key: (accuracy, correct, total)."""
    key_ids, key_labels = read_submission(key_path)
    submitted = check_submission(path, key_ids, num_classes=None)  # a wrong label just misses
    # Both hold the same ids once each: sorting by id aligns them.
    predicted = submitted.labels[np.argsort(submitted.ids)]
    correct = int((predicted == key_labels[np.argsort(key_ids)]).sum())
    return correct / len(key_ids), correct, len(key_ids)
