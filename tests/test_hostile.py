"""Every file a user hands us is hostile, every clumsy command ends cleanly: one test per class
of attack or mistake, and property-based fuzzing of the pickle loader and the CSV checker.

The fuzzing runs a few hundred examples per property; BUDGETNET_FUZZ_EXAMPLES=20000 runs more.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import time
import zlib

import inference
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from budgetnet import files
from budgetnet.data.safe_pickle import safe_loads
from budgetnet.data.sources import decode_images, load_split, load_splits
from budgetnet.errors import ArgumentParser, UserError, brief
from budgetnet.evaluation.ensemble import Ensemble
from budgetnet.files import atomic_write
from budgetnet.models.builder import build
from budgetnet.models.checkpoint import load_release, save_release
from budgetnet.submission.csv_file import check_submission, read_submission, write_submission
from budgetnet.training import engine
from budgetnet.training.config import TrainConfig, merge, short_run_warmup
from budgetnet.training.lr_range import lr_range_test

from cifar_files import CIFAR10_CLASSES, random_images
from conftest import REPO
from refusals import fuzz_settings, mutated, refused
from tiny import PREPROCESSING, TINY_SPEC, TRAIN_FLAGS, edited_release, tiny_config

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


def test_release_spec_asking_for_huge_layers_is_refused_before_allocating(tmp_path, release):
    folder = edited_release(
        release, tmp_path / "huge", lambda meta: meta["spec"].update(channels=[10**9, 10**9])
    )
    refused(lambda: load_release(folder), "exceeds the limit")


# --------------------------------------------------------------------------------------------
# Broken models never give an "OK" submission


def test_nan_weights_are_refused(tmp_path):
    model = build(TINY_SPEC)
    with torch.no_grad():
        model.head.fc.weight[0, 0] = float("nan")
    folder = save_release(tmp_path / "nan", model, CIFAR10_CLASSES, PREPROCESSING, {}, {})
    refused(lambda: load_release(folder), "non-finite weights")


def test_degenerate_normalisation_is_refused(tmp_path, release):
    folder = edited_release(
        release, tmp_path / "std0", lambda meta: meta["normalization"].update(std=[0.0] * 3)
    )
    refused(lambda: load_release(folder), "normalisation std")


def test_non_finite_probabilities_write_no_csv(tmp_path, release, pkl, monkeypatch):
    monkeypatch.setattr(
        Ensemble, "probs", lambda self, images, **kw: np.full((len(images), 10), np.nan)
    )
    out = tmp_path / "s.csv"
    args = ["--pkl", str(pkl), "--out", str(out), "--checkpoint", str(release)]
    refused(lambda: inference.main(args), "non-finite probabilities")
    assert not out.exists()


@pytest.mark.parametrize(
    "values, match",
    [
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"lr": float("inf")}, "lr must be a finite number"),
        ({"epochs": "10"}, "epochs must be an integer, got str '10'"),
        ({"batch_size": 12.5}, "batch_size must be an integer"),
        ({"nesterov": "yes"}, "nesterov must be true or false"),
        ({"tta": None}, "tta needs a value"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_config_values_of_the_wrong_type_are_one_line(values, match):
    refused(lambda: merge(TrainConfig(), values, "test.yaml"), match)


def test_aa_none_on_the_command_line_turns_randaugment_off():
    from budgetnet.cli import add_config_arguments, resolve_training

    parser = ArgumentParser()
    add_config_arguments(parser)
    config, _ = resolve_training(parser.parse_args(["--aa", "None"]))
    assert config.augment.aa is None


# --------------------------------------------------------------------------------------------
# Clumsy paths never destroy data


def test_out_equal_to_pkl_is_refused_and_the_pickle_kept(pkl, release):
    before = pkl.read_bytes()
    args = ["--pkl", str(pkl), "--out", str(pkl), "--checkpoint", str(release)]
    refused(lambda: inference.main(args), "--pkl and --out name the same file")
    assert pkl.read_bytes() == before


def test_save_probs_equal_to_out_is_refused(pkl, release, tmp_path):
    out = tmp_path / "s.csv"
    args = ["--pkl", str(pkl), "--out", str(out), "--save-probs", str(out)]
    refused(lambda: inference.main([*args, "--checkpoint", str(release)]), "same file")


def test_a_csv_that_fails_the_check_never_replaces_the_good_one(
    pkl, release, tmp_path, monkeypatch
):
    out = tmp_path / "s.csv"
    out.write_text("ID,Labels\n5,1\n")
    good = out.read_text()

    def failing_check(path, ids, num_classes):
        raise UserError("checker says no")

    monkeypatch.setattr(inference, "check_submission", failing_check)
    args = ["--pkl", str(pkl), "--out", str(out), "--checkpoint", str(release)]
    refused(lambda: inference.main(args), "checker says no")
    assert out.read_text() == good
    assert not list(tmp_path.glob(".s.csv.*"))  # its temporary file is gone too


def test_out_that_is_a_directory_is_refused(pkl, release, tmp_path):
    args = ["--pkl", str(pkl), "--out", str(tmp_path), "--checkpoint", str(release)]
    refused(lambda: inference.main(args), "is a directory")


def test_written_files_get_umask_permissions_and_stale_temporaries_go(tmp_path):
    target = tmp_path / "x.csv"
    stale, fresh = tmp_path / ".x.csv.old1.tmp", tmp_path / ".x.csv.new1.tmp"
    stale.write_text("left by a killed run")
    fresh.write_text("another writer, still running")
    os.utime(stale, (time.time() - 2 * files.STALE_SECONDS,) * 2)
    with atomic_write(target) as handle:
        handle.write("ID,Labels\n")
    mask = os.umask(0)
    os.umask(mask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~mask
    assert not stale.exists() and fresh.exists()


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", no_space)
    refused(
        lambda: write_submission(tmp_path / "s.csv", np.array([1]), np.array([2])),
        "cannot write .*No space left",
    )
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# The CSV checker


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


# --------------------------------------------------------------------------------------------
# Commands that used to end in a traceback


def test_inference_refuses_batch_size_zero_in_one_line(pkl, release, tmp_path, run_main):
    result = run_main(
        "inference.py", "--pkl", str(pkl), "--out", str(tmp_path / "s.csv"),
        "--checkpoint", str(release), "--batch-size", "0",
    )  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "must be at least 1" in result.stderr


def test_broken_resume_state_and_config_are_one_line(cifar, tmp_path):
    from train import main as train_main

    config = tiny_config(cifar, tmp_path, epochs=1, warmup_epochs=0.5, patience=3)
    engine.fit(config, TINY_SPEC, log=lambda line: None)
    run = tmp_path / "run"
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["patience_left"] == 3  # saved, so a resumed run stops where it would have
    torch.save({"model": state["model"]}, run / "last.pt")
    refused(lambda: train_main(["--resume", str(run)]), "not a resume state of this run")
    (run / "config.yaml").write_text("config: {}\n")
    refused(lambda: train_main(["--resume", str(run)]), "has no model settings")


def test_huge_png_is_refused_before_decoding(tmp_path):
    from PIL import Image

    path = tmp_path / "bomb.png"
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", 20000, 20000)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    refused(lambda: decode_images([str(path)]), "an image may have")


def test_a_short_run_shortens_its_warmup_and_says_so(cifar, tmp_path):
    config, note = short_run_warmup(TrainConfig().with_values(epochs=1))
    assert (
        config.schedule.warmup_epochs == pytest.approx(0.2) and "warming up for 0.2 epochs" in note
    )
    assert short_run_warmup(TrainConfig().with_values(epochs=10, warmup_epochs=2)) == (
        TrainConfig().with_values(epochs=10, warmup_epochs=2),
        None,
    )
    lines = []
    engine.fit(
        tiny_config(cifar, tmp_path, epochs=1, warmup_epochs=5.0), TINY_SPEC, log=lines.append
    )
    assert any(line.startswith("note: warmup_epochs 5") for line in lines)


def test_lr_range_test_without_a_full_batch_is_refused(cifar):
    splits = load_splits(cifar, val_size=0)
    config = TrainConfig().with_values(batch_size=4096, aa=None, reprob=0.0, device="cpu")
    refused(lambda: lr_range_test(config, TINY_SPEC, splits, steps=5), "make no batch")


def test_load_split_reads_the_tiny_cifar_through_the_capped_readers(cifar):
    assert len(load_split(cifar, "train", cache_dir=False)) == 200


def test_train_refuses_a_fractional_epoch_count_in_one_line(cifar, tmp_path, run_main):
    result = run_main("code/train.py", "--data", str(cifar), *TRAIN_FLAGS, "--epochs", "1.5")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# Property-based: random and mutated inputs give a clean refusal or a correct load, never
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


def test_brief_never_shows_a_whole_value():
    assert brief("x" * 10_000).startswith("str 'x") and len(brief("x" * 10_000)) <= 44
    assert brief(10**5000).startswith("int ")  # too long even to print: still one line
    assert len(brief(list(range(10**5)))) < 60


def test_read_submission_still_reads_what_we_write(tmp_path):
    path = write_submission(tmp_path / "s.csv", np.array([7, 3]), np.array([1, 9]))
    ids, labels = read_submission(path)
    assert ids.tolist() == [7, 3] and labels.tolist() == [1, 9]
