"""Kaggle submission files `ID,Labels`: write one atomically, check one, score one against a key.

An answer key has the same format as a submission, so one reader serves both.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from budgetnet.errors import UserError, shorten
from budgetnet.files import atomic_write, read_regular_file

HEADER = ("ID", "Labels")
# ASCII digits only ("\d" would accept Arabic-Indic or fullwidth digits, which Kaggle does not),
# and at most 18 of them, so every value fits in 64 bits.
_INTEGER = re.compile(r"-?[0-9]{1,18}")
MAX_CSV_BYTES = 256 << 20  # far above any CIFAR-style submission (10,000 rows: ~100 KB)


def write_submission(
    path: str | Path,
    ids: np.ndarray,
    labels: np.ndarray,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Rows `ID,Labels` with the ids exactly as given, in their order, and integer labels.
    `check` sees the finished file before it replaces `path` (see `atomic_write`)."""
    ids, labels = np.asarray(ids), np.asarray(labels)
    if ids.shape != labels.shape or ids.ndim != 1:
        raise ValueError(f"ids {ids.shape} and labels {labels.shape} must be equal 1-D shapes")
    if ids.dtype.kind not in "iu" or labels.dtype.kind not in "iu":
        raise ValueError(f"ids ({ids.dtype}) and labels ({labels.dtype}) must be integers")
    with atomic_write(path, newline="", check=check) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(zip(ids.tolist(), labels.tolist(), strict=True))
    return Path(path)


def read_submission(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) of a submission or answer key, refusing anything that is not `ID,Labels`
    followed by rows of two integers."""
    path = Path(path)
    raw = read_regular_file(path, MAX_CSV_BYTES, "submission CSV")
    try:
        text = raw.decode("utf-8-sig")  # tolerate Excel's BOM
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read as CSV ({shorten(str(exc))})") from None
    if not rows:
        raise UserError(f"{path}: empty file, expected the header {','.join(HEADER)}")
    if tuple(c.strip() for c in rows[0]) != HEADER:
        raise UserError(
            f"{path}: header is {shorten(','.join(rows[0]))!r}, expected {','.join(HEADER)!r}"
        )
    body = [row for row in rows[1:] if row]  # a trailing blank line is harmless
    for line, row in enumerate(body, start=2):
        if len(row) != 2 or not all(_INTEGER.fullmatch(c.strip()) for c in row):
            raise UserError(
                f"{path}: line {line} is {shorten(','.join(row))!r}, expected two integers "
                "ID,Labels (ASCII digits, at most 18)"
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
    # Extra ids alone are possible only when expected_ids repeats one; refused all the same.
    extra = np.setdiff1d(ids, expected_ids)
    if len(missing):
        raise UserError(
            f"{path}: {len(missing)} ids of the test set are missing (e.g. "
            f"{_examples(missing)}) and {len(extra)} are not in it (e.g. "
            f"{_examples(extra)})"
        )
    if len(extra):
        raise UserError(
            f"{path}: {len(extra)} ids are not in the test set (e.g. {_examples(extra)})"
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
    unique, counts = np.unique(key_ids, return_counts=True)
    if len(unique) != len(key_ids):  # the alignment below needs each id once
        raise UserError(
            f"{key_path}: answer key has duplicate ids, e.g. {_examples(unique[counts > 1])}"
        )
    submitted = check_submission(path, key_ids, num_classes=None)  # a wrong label just misses
    # Both hold the same ids once each: sorting by id aligns them.
    predicted = submitted.labels[np.argsort(submitted.ids)]
    correct = int((predicted == key_labels[np.argsort(key_ids)]).sum())
    return correct / len(key_ids), correct, len(key_ids)
