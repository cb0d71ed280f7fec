"""Kaggle submission files `ID,Labels`: write one atomically, check one, score one against a key.

An answer key has the same format as a submission, so one reader serves both.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from budgetnet.errors import UserError, shorten
from budgetnet.files import atomic_write, read_regular_file

HEADER = ("ID", "Labels")
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


def _field(value: bytes) -> bytes:
    """One field: `value`, maybe double-quoted, with optional ASCII spaces or tabs around it."""
    return rb"[ \t]*(?:" + value + rb'|"' + value + rb'")[ \t]*'


# The documented format, byte for byte: an optional UTF-8 BOM, the header `ID,Labels`, then
# lines of two integers (an optional "-" and 1 to 18 ASCII digits, so every value fits in 64
# bits), each field maybe double-quoted and padded with ASCII spaces or tabs; lines end in "\n"
# or "\r\n" (the last may end in neither) and blank ones are skipped. Nothing else passes: no
# other whitespace (Python's str.strip would also drop \x1c-\x1f, \x85 or a no-break space),
# no other digits, no control characters, no bytes that are not ASCII.
_INTEGER = rb"-?[0-9]{1,18}"
_HEADER = re.compile(_field(b"ID") + b"," + _field(b"Labels") + rb"\r?")
_ROW = rb"(?:" + _field(_INTEGER) + b"," + _field(_INTEGER) + rb"|[ \t]*)\r?"
# The first line of the body that is not a row (or blank): one scan, no object per line.
_BAD_LINE = re.compile(rb"^(?!" + _ROW + rb"$)", re.MULTILINE)
_VALUE = re.compile(_INTEGER)
_CHUNK_BYTES = 1 << 18  # rows are parsed this many bytes (whole lines) at a time


def read_submission(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) of a submission or answer key, refusing anything that is not `ID,Labels`
    followed by rows of two integers (the format above) in one line naming the first bad one.

    Memory stays a small multiple of the file's size: the whole body is checked by one regular
    expression scan, then parsed a chunk of lines at a time into int64 arrays sized from the
    file (one comma per row), never as Python objects per row."""
    path = Path(path)
    raw = read_regular_file(path, MAX_CSV_BYTES, "submission CSV")
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0  # Excel's BOM
    if start == len(raw):
        raise UserError(f"{path}: empty file, expected the header {','.join(HEADER)}")
    header_end = raw.find(b"\n", start)
    header_end = len(raw) if header_end < 0 else header_end
    if not _HEADER.fullmatch(raw, start, header_end):
        raise UserError(
            f"{path}: header is {_excerpt(raw, start, header_end)!r}, expected {','.join(HEADER)!r}"
        )
    body = header_end + 1
    bad = _BAD_LINE.search(raw, body)
    if bad is not None:
        line = raw.count(b"\n", 0, bad.start()) + 1
        end = raw.find(b"\n", bad.start())
        raise UserError(
            f"{path}: line {line} is {_excerpt(raw, bad.start(), len(raw) if end < 0 else end)!r}"
            ", expected two integers ID,Labels (ASCII digits, at most 18)"
        )
    rows = raw.count(b",", body)  # every line is checked: one comma per row, none elsewhere
    if not rows:
        raise UserError(f"{path}: has a header but no rows")
    ids, labels = np.empty(rows, dtype=np.int64), np.empty(rows, dtype=np.int64)
    filled, pos = 0, body
    while pos < len(raw):
        end = raw.find(b"\n", min(pos + _CHUNK_BYTES, len(raw) - 1)) + 1 or len(raw)
        values = np.array(_VALUE.findall(raw, pos, end), dtype="S19").astype(np.int64)
        ids[filled : filled + len(values) // 2] = values[0::2]
        labels[filled : filled + len(values) // 2] = values[1::2]
        filled, pos = filled + len(values) // 2, end
    assert filled == rows, (filled, rows)  # as the check above guarantees
    return ids, labels


def _excerpt(raw: bytes, start: int, end: int) -> str:
    """At most a few dozen characters of raw[start:end] as text (undecodable bytes escaped,
    a line's "\\r" dropped), for an error message."""
    text = raw[start : min(end, start + 200)].decode("utf-8", "backslashreplace")
    return shorten(text.removesuffix("\r"))


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
