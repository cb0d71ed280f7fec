"""The submission CSV reader and checker (budgetnet.submission.csv_file) on hostile CSVs: ids
Kaggle would not read or padded with what str.strip removes, a large file read in bounded
memory, line numbers, and property-based fuzzing (a few hundred examples;
BUDGETNET_FUZZ_EXAMPLES=20000 runs more)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from budgetnet.errors import UserError
from budgetnet.submission.csv_file import check_submission, read_submission, write_submission

from conftest import REPO
from refusals import assert_one_line_refusal, fuzz_settings, mutated, refused

FUZZ = fuzz_settings()


# --------------------------------------------------------------------------------------------
# CSV ids: only what the format allows, never what str.strip would remove


@pytest.mark.parametrize(
    "row, what",
    [
        ("١٢,3", "Arabic-Indic digits"),
        ("１２,3", "fullwidth digits"),
        ("12345678901234567890123,3", "a 23-digit id"),
        ("1" * 10_000_000 + ",3", "a 10 MB id"),
    ],
)
def test_checker_refuses_ids_kaggle_would_not_read(row, what, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(f"ID,Labels\n{row}\n", encoding="utf-8")
    refused(lambda: check_submission(path, np.array([12]), 10), "line 2 is|cannot read as CSV")


STRIPPED_BY_PYTHON = {
    "0x1c (file separator)": "12\x1c,3",
    "0x1f (unit separator)": "12,3\x1f",
    "leading 0x1d": "\x1d12,3",
    "a trailing no-break space": "12\u00a0,3",
    "a no-break space after the label": "12,3\u00a0",
    "NEL (U+0085)": "\u008512,3",
    "an em space": "12\u2003,3",
    "a vertical tab": "12\x0b,3",
    "a form feed": "12,3\x0c",
    "a lone carriage return inside": "12\r,3",
    "a NUL": "12\x00,3",
    "an ideographic space": "\u300012,3",
}


@pytest.mark.parametrize("case", list(STRIPPED_BY_PYTHON))
def test_ids_padded_with_what_strip_removes_are_refused_in_one_line(case, tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(f"ID,Labels\n{STRIPPED_BY_PYTHON[case]}\n".encode())
    refused(lambda: check_submission(path, np.array([12]), 10), "line 2 is")


def test_the_check_command_refuses_control_characters_in_one_line(tmp_path, pkl, run_main):
    for row in ("5\x1c,1", "5\u00a0,1"):
        path = tmp_path / "s.csv"
        path.write_bytes(f"ID,Labels\n{row}\n9,0\n1,0\n7,0\n3,0\n8,0\n".encode())
        result = run_main("code/check_submission.py", str(path), "--pkl", str(pkl))
        assert_one_line_refusal(result, "line 2 is")


def test_what_the_format_allows_is_still_read(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(
        b'\xef\xbb\xbf "ID" ,\tLabels\r\n 12 ,\t3 \r\n\r\n"-4","5"\n  \n7,8'  # BOM, no final \n
    )
    ids, labels = read_submission(path)
    assert ids.tolist() == [12, -4, 7] and labels.tolist() == [3, 5, 8]
    assert ids.dtype == labels.dtype == np.int64
    path.write_bytes(b"ID,Labels\n999999999999999999,-999999999999999999\n")
    assert read_submission(path)[0].tolist() == [10**18 - 1]
    for bad in (b"1,2,\n", b"+1,2\n", b"1 2,3\n", b'"1,2"\n', b"1,,2\n", b"1,2\r\r\n", b"0x1,2\n"):
        path.write_bytes(b"ID,Labels\n" + bad)
        refused(lambda: read_submission(path), "line 2 is")
    path.write_bytes(b"ID,Labels\n" + b"1" * 19 + b",2\n")
    refused(lambda: read_submission(path), "line 2 is")


def test_csv_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(b"ID,Labels\n1,2\n\n\n4,x\n")
    refused(lambda: read_submission(path), "line 5 is '4,x'")


def test_read_submission_still_reads_what_we_write(tmp_path):
    path = write_submission(tmp_path / "s.csv", np.array([7, 3]), np.array([1, 9]))
    ids, labels = read_submission(path)
    assert ids.tolist() == [7, 3] and labels.tolist() == [1, 9]


# --------------------------------------------------------------------------------------------
# A large CSV is read in memory a small multiple of its size

_CSV_PROBE = r"""
import resource, sys
sys.path.insert(0, "code")
from budgetnet.submission.csv_file import read_submission
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ids, labels = read_submission(sys.argv[1])
print(len(ids), int(ids.sum()), int(labels.sum()))
print("grew_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.mark.parametrize(
    "row, rows",
    [
        (b"1,2\n", 6_000_000),  # the shortest rows: the most values per byte (24 MB)
        (b' "123456789" , 7 \r\n', 1_200_000),  # quoted, padded, CRLF (24 MB)
    ],
)
def test_a_large_csv_is_read_in_memory_a_small_multiple_of_its_size(row, rows, tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"ID,Labels\n" + row * rows)
    size_mb = path.stat().st_size / (1 << 20)
    result = subprocess.run(
        [sys.executable, "-c", _CSV_PROBE, str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    counted, grew = result.stdout.strip().splitlines()
    value = 1 if row.startswith(b"1,") else 123456789
    label = 2 if row.startswith(b"1,") else 7
    assert counted.split() == [str(rows), str(value * rows), str(label * rows)]
    # the file itself, 16 bytes of int64 per row and a bounded chunk (was ~25x the file)
    assert float(grew.split()[1]) < 6 * size_mb + 32


def test_a_bad_line_deep_in_a_large_csv_is_named_by_its_number(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"ID,Labels\n" + b"1,2\n" * 1_000_000 + b"3,4\x1c\n")
    refused(lambda: read_submission(path), "line 1000002 is '3,4\\\\x1c'")


# --------------------------------------------------------------------------------------------
# Property-based: random and mutated CSVs pass the check or are refused cleanly, never another
# exception


def _check_or_refuse(tmp_path, content: bytes) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_bytes(content)
    try:
        checked = check_submission(path, np.array([1, 2, 3]), 10)
    except UserError as exc:
        assert len(str(exc)) < 600
        return
    assert sorted(checked.ids.tolist()) == [1, 2, 3]
    assert all(0 <= label < 10 for label in checked.labels.tolist())


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_pass_the_csv_check_or_are_refused(tmp_path, content):
    _check_or_refuse(tmp_path, content)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 10**5), st.sampled_from(["r", "i", "d"]),
                       st.sampled_from(list("0123456789,\n\r -+x.٣１\"\x00"))),
             min_size=1, max_size=5),
)  # fmt: skip
def test_fuzz_mutated_csvs_pass_the_check_or_are_refused(tmp_path, edits):
    text = mutated(list("ID,Labels\n1,4\n2,0\n3,9\n"), edits)
    _check_or_refuse(tmp_path, "".join(text).encode("utf-8"))
