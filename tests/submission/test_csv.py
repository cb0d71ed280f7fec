"""Submission files: the writer, the checker and the scorer, and their refusals."""

from __future__ import annotations

import numpy as np
import pytest

from budgetnet.errors import UserError
from budgetnet.submission.csv_file import (
    check_submission,
    read_submission,
    score_submission,
    write_submission,
)

IDS = np.array([40, 3, 17, 0, 99, 5])
LABELS = np.array([1, 9, 0, 0, 4, 2])


def test_write_keeps_ids_and_order(tmp_path):
    path = write_submission(tmp_path / "sub" / "submission.csv", IDS, LABELS)
    assert path.read_text() == "ID,Labels\n40,1\n3,9\n17,0\n0,0\n99,4\n5,2\n"
    ids, labels = read_submission(path)
    np.testing.assert_array_equal(ids, IDS)
    np.testing.assert_array_equal(labels, LABELS)
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "submission.csv"
    path.write_text("old content\n")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("csv.writer", fail)
    with pytest.raises(RuntimeError):
        write_submission(path, IDS, LABELS)
    assert path.read_text() == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_writer_refuses_non_integers(tmp_path):
    with pytest.raises(ValueError):
        write_submission(tmp_path / "s.csv", IDS, LABELS.astype(float))
    with pytest.raises(ValueError):
        write_submission(tmp_path / "s.csv", IDS, LABELS[:3])
    assert not (tmp_path / "s.csv").exists()


def test_check_accepts_any_row_order(tmp_path):
    path = write_submission(tmp_path / "s.csv", IDS[::-1], LABELS[::-1])
    checked = check_submission(path, IDS)
    assert checked.summary(10).startswith("6 rows; predictions per class 0:2 1:1 2:1 3:0 4:1")


BAD_FILES = [
    ("", "empty file"),
    ("ID,Label\n40,1\n", "header is 'ID,Label'"),
    ("id,labels\n40,1\n", "expected 'ID,Labels'"),
    ("ID,Labels\n", "no rows"),
    ("ID,Labels\n40,1\n3,9\n17,0\n0,0\n99,4\n", "5 rows, expected 6"),
    ("ID,Labels\n40,1\n3,9\n17,0\n0,0\n99,4\n5,2\n6,1\n", "7 rows, expected 6"),
    ("ID,Labels\n40,1\n3,9\n17,0\n0,0\n99,4\n99,2\n", "duplicate ids, e.g. 99"),
    (
        "ID,Labels\n40,1\n3,9\n17,0\n0,0\n99,4\n6,2\n",
        r"1 ids .* missing \(e.g. 5\) and 1 .* \(e.g. 6\)",
    ),
    ("ID,Labels\n40,1\n3,10\n17,0\n0,0\n99,4\n5,-1\n", r"2 labels outside 0\.\.9, e.g. -1, 10"),
    ("ID,Labels\n40,1\n3,9.0\n17,0\n0,0\n99,4\n5,2\n", "line 3 is '3,9.0'"),
    ("ID,Labels\n40,1\n3,cat\n17,0\n0,0\n99,4\n5,2\n", "line 3 is '3,cat'"),
    ("ID,Labels\n40,1,7\n3,9\n17,0\n0,0\n99,4\n5,2\n", "line 2 is '40,1,7'"),
    ("ID,Labels\n40\n3,9\n17,0\n0,0\n99,4\n5,2\n", "line 2 is '40'"),
]


@pytest.mark.parametrize(("content", "message"), BAD_FILES)
def test_malformed_submissions_are_refused_with_the_reason(tmp_path, content, message):
    path = tmp_path / "s.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        check_submission(path, IDS)


def test_check_tolerates_bom_trailing_blank_line_and_crlf(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(
        "\ufeffID,Labels\r\n40,1\r\n3,9\r\n17,0\r\n0,0\r\n99,4\r\n5,2\r\n\r\n".encode()
    )
    check_submission(path, IDS)


def test_check_respects_num_classes(tmp_path):
    path = write_submission(tmp_path / "s.csv", IDS, LABELS * 10)
    check_submission(path, IDS, num_classes=100)
    with pytest.raises(UserError, match="outside 0..9"):
        check_submission(path, IDS, num_classes=10)


def test_score_counts_right_labels_in_any_row_order_and_refuses_other_ids(tmp_path):
    key = write_submission(tmp_path / "key.csv", IDS, LABELS)
    guess = LABELS.copy()
    guess[[0, 3]] = [5, 7]
    sub = write_submission(tmp_path / "s.csv", IDS[::-1], guess[::-1])  # order does not matter
    assert score_submission(sub, key) == (pytest.approx(4 / 6), 4, 6)
    assert score_submission(key, key) == (1.0, 6, 6)
    wrong_ids = write_submission(tmp_path / "w.csv", IDS + 1, LABELS)
    with pytest.raises(UserError, match="missing"):
        score_submission(wrong_ids, key)


def test_key_with_a_repeated_id_cannot_score_a_wrong_submission(tmp_path):
    key = write_submission(tmp_path / "key.csv", np.array([1, 1, 2]), np.array([0, 0, 1]))
    # Id 2 is wrong and id 3 is not in the key, yet sorting aligned these to score 100%.
    sub = write_submission(tmp_path / "s.csv", np.array([1, 2, 3]), np.array([0, 0, 1]))
    with pytest.raises(UserError, match="answer key has duplicate ids, e.g. 1"):
        score_submission(sub, key)
    # The checker refuses ids outside a test set even when none are missing.
    with pytest.raises(UserError, match="1 ids are not in the test set \\(e.g. 3\\)"):
        check_submission(sub, np.array([1, 1, 2]))
