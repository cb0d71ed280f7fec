"""The safe pickle loader (budgetnet.data.safe_pickle) on hostile pickles: arrays holding
object pointers, huge or deeply nested ones, plain values at every protocol, and
property-based fuzzing (a few hundred examples; BUDGETNET_FUZZ_EXAMPLES=20000 runs more)."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from budgetnet.data.safe_pickle import safe_loads
from budgetnet.errors import UserError

from cifar_files import random_images
from conftest import REPO
from refusals import fuzz_settings, mutated, refused

FUZZ = fuzz_settings()


# --------------------------------------------------------------------------------------------
# Pickles that used to corrupt memory: arrays whose dtype holds Python object pointers


def _object_array_pickles() -> dict[str, bytes]:
    struct_with_object = np.zeros(2, dtype=[("a", "i4"), ("b", "O")])
    return {
        "object dtype (protocol 2)": pickle.dumps(np.array([1, None], dtype=object), protocol=2),
        "object dtype (protocol 5)": pickle.dumps(np.array([1, None], dtype=object), protocol=5),
        "void dtype hiding an object field": pickle.dumps(struct_with_object, protocol=2),
        "numpy.ndarray called directly": b"\x80\x02cnumpy\nndarray\nK\x02\x85R.",
        "dtype state with fields": b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88\x87R"
        b"(K\x03X\x01\x00\x00\x00|N(X\x01\x00\x00\x00a\x85t}K\x08K\x01K\x00tb.",
    }


@pytest.mark.parametrize("name", list(_object_array_pickles()))
def test_object_pointer_arrays_are_refused(name):
    refused(lambda: safe_loads(_object_array_pickles()[name]), "not safe to load")


def test_object_array_pickle_ends_inference_with_one_line(tmp_path, release):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({b"data": np.array([1, None], dtype=object), b"ids": [1, 2]}))
    result = subprocess.run(
        [sys.executable, "inference.py", "--pkl", str(path), "--out", str(tmp_path / "s.csv"),
         "--checkpoint", str(release)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]  # not 139, a segmentation fault
    assert len(result.stderr.strip().splitlines()) == 1 and "not safe to load" in result.stderr
    assert not (tmp_path / "s.csv").exists()


def test_plain_pickles_still_load_at_every_protocol():
    value = {
        b"data": np.arange(12, dtype=np.uint8).reshape(3, 4),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "big_endian": np.arange(3, dtype=">i4"),
        "text": np.array(["ab", "c"]),
        "bytes": np.array([b"x"]),
        "empty": np.zeros((0, 5)),
        "scalar": np.float32(1.5),
        "plain": [1, 2.5, None, True, "s", b"", (1, 2)],
    }
    for protocol in range(6):
        loaded = safe_loads(pickle.dumps(value, protocol=protocol))
        for key, expected in value.items():
            if isinstance(expected, np.ndarray):
                got = loaded[key]
                assert got.dtype == expected.dtype and np.array_equal(got, expected)
                assert got.flags.writeable and got.flags.f_contiguous == expected.flags.f_contiguous
            else:
                assert loaded[key] == expected and type(loaded[key]) is type(expected)


# --------------------------------------------------------------------------------------------
# Memory and time: nothing a small file says is allocated before it is checked

_MEMORY_PROBE = r"""
import resource, sys
sys.path.insert(0, "code")
from budgetnet.errors import UserError
from budgetnet.data.kaggle import read_unlabeled_pickle
from budgetnet.data.sources import load_split
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        read_unlabeled_pickle(path) if kind == "pkl" else load_split(path, "train", cache_dir=False)
        print("loaded", path)
    except UserError as exc:
        print("refused", str(exc)[:200])
print("grew_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def _huge_reconstruct_pickle() -> bytes:
    """160-odd bytes asking numpy for a 1.2 GB object array (_reconstruct with a big shape)."""
    return (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        b"J\x00\xa3\xe1\x11\x85C\x01O\x87R(K\x01J\x00\xa3\xe1\x11\x85cnumpy\ndtype\n"
        b"X\x02\x00\x00\x00O8\x89\x88\x87R\x89C\x00tb."
    )


def _sparse_member_archive(path) -> None:
    """A .tar.gz whose data_batch_1 header claims 1 GiB (the data is not there)."""
    header = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    header.size = 1 << 30
    raw = header.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024
    path.write_bytes(gzip.compress(raw))


def test_small_hostile_files_stay_small_in_memory_and_time(tmp_path):
    evil = tmp_path / "reconstruct.pkl"
    evil.write_bytes(_huge_reconstruct_pickle())
    memo = tmp_path / "memo.pkl"
    memo.write_bytes(b"\x80\x02]r\xff\xff\xff\x0f.")  # LONG_BINPUT at index 2^28
    archive = tmp_path / "cifar-10-python.tar.gz"
    _sparse_member_archive(archive)
    fifo = tmp_path / "pipe.pkl"
    os.mkfifo(fifo)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, "pkl", str(evil), "pkl", str(memo), "pkl",
         "/dev/zero", "pkl", str(fifo), "data", str(archive)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:5]] == ["refused"] * 5, lines
    assert "not a regular file" in lines[2] and "not a regular file" in lines[3]
    assert float(lines[-1].split()[1]) < 100  # MB of peak memory beyond the imports
    assert time.perf_counter() - started < 60


def test_deeply_nested_ids_are_refused_without_recursion():
    depth = 1_000_000
    nested = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    refused(lambda: safe_loads(nested), "nested more than")


# --------------------------------------------------------------------------------------------
# Property-based: random and mutated pickles give a clean refusal or a correct load, never
# another exception

_VALID = [
    pickle.dumps(
        {b"data": random_images(3, seed=1), b"ids": np.array([3, 1, 2])}, protocol=protocol
    )
    for protocol in (2, 4, 5)
] + [pickle.dumps({b"labels": [1, 2, 3], b"batch_label": b"x", "f": 1.5}, protocol=2)]
_ALLOWED_TYPES = (dict, list, tuple, set, frozenset, type(None), bool, int, float, complex, str,
                  bytes, bytearray, np.ndarray, np.generic, np.dtype)  # fmt: skip


def _only_plain_values(value) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if not isinstance(item, _ALLOWED_TYPES):
            return False
        if isinstance(item, np.ndarray) and item.dtype.kind not in "biufcSU":
            return False
        if isinstance(item, dict):
            stack.extend([*item.keys(), *item.values()])
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return True


def _load_or_refuse(data: bytes) -> None:
    try:
        loaded = safe_loads(data)
    except UserError as exc:
        assert len(str(exc)) < 600
        return
    assert _only_plain_values(loaded)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_load_as_plain_values_or_are_refused(data):
    _load_or_refuse(data)
    _load_or_refuse(b"\x80\x02" + data)


@FUZZ
@given(
    st.sampled_from(_VALID),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from("rid")),
             min_size=1, max_size=6),
)  # fmt: skip
def test_fuzz_mutated_pickles_load_as_plain_values_or_are_refused(valid, edits):
    _load_or_refuse(bytes(mutated(bytearray(valid), [(p, k, b) for p, b, k in edits])))
