"""Files and paths (budgetnet.files): written atomically with the umask's permissions, a full
disk one line; files that are not regular are never waited on; OS errors on a user's path
(names too long, a file as a run directory) end a command in one line with nothing written."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import numpy as np

from budgetnet import files, runs
from budgetnet.data.sources import load_split, read_image
from budgetnet.files import atomic_write
from budgetnet.models.checkpoint import load_state
from budgetnet.submission.csv_file import write_submission

from cifar_files import write_image_folder
from conftest import REPO
from refusals import one_line_exit_2, refused, tree, within
from tiny import TINY_SPEC, TRAIN_FLAGS, tiny_config

TOO_LONG = "x" * 300  # one path component longer than any file system's NAME_MAX (255)


# --------------------------------------------------------------------------------------------
# Writing: atomic, with the umask's permissions, nothing left behind


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
# Files that are not regular: never waited on, refused before a byte is read


def test_fifo_last_pt_on_resume_is_refused_not_waited_on(cifar, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    runs.write_config(
        run, {"settings": tiny_config(cifar, tmp_path).flat(), "model": TINY_SPEC.to_dict()}
    )
    os.mkfifo(run / "last.pt")
    before = tree(tmp_path)
    result = subprocess.run(
        [sys.executable, "code/train.py", "--resume", str(run)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
        env={**os.environ, "BUDGETNET_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    one_line_exit_2(result, "not a regular file")
    assert tree(tmp_path) == before


def test_other_files_that_are_not_regular_are_refused(tmp_path):
    (tmp_path / "zero.pt").symlink_to("/dev/zero")  # a device: endless bytes
    refused(lambda: within(30, lambda: load_state(tmp_path / "zero.pt")), "not a regular file")
    (tmp_path / "dir.pt").mkdir()
    refused(lambda: load_state(tmp_path / "dir.pt"), "is a directory")
    os.mkfifo(tmp_path / "pipe.png")
    refused(lambda: within(30, lambda: read_image(tmp_path / "pipe.png")), "not a regular file")
    # A FIFO in an image folder's cache is a broken cache: decoded again, never waited on.
    write_image_folder(tmp_path / "data", {"a": 2})
    cache = tmp_path / "cache"
    first = load_split(tmp_path / "data", "train", cache_dir=cache)
    for npy in cache.rglob("images.npy"):
        npy.unlink()
        os.mkfifo(npy)
    again = within(60, lambda: load_split(tmp_path / "data", "train", cache_dir=cache))
    np.testing.assert_array_equal(again.images, first.images)


# --------------------------------------------------------------------------------------------
# OS errors on a user's path: one line, exit 2, whatever the errno


def test_names_longer_than_the_file_system_allows_are_one_line(
    tmp_path, pkl, release, run_main, cifar
):
    before = tree(tmp_path)
    long_out = tmp_path / f"{TOO_LONG}.csv"
    result = run_main(
        "inference.py", "--pkl", str(pkl), "--out", str(long_out), "--checkpoint", str(release)
    )
    one_line_exit_2(result, "File name too long")
    result = run_main(
        "inference.py", "--pkl", str(pkl), "--out", str(tmp_path / "s.csv"),
        "--checkpoint", str(tmp_path / TOO_LONG),
    )  # fmt: skip
    one_line_exit_2(result, "too long")
    result = run_main("code/train.py", "--resume", str(tmp_path / TOO_LONG))
    one_line_exit_2(result, "File name too long")
    result = run_main(
        "code/train.py", "--data", str(cifar), *TRAIN_FLAGS, "--run-dir", str(tmp_path / TOO_LONG)
    )
    one_line_exit_2(result, "File name too long")
    assert tree(tmp_path) == before


def test_run_dir_that_is_an_existing_file_is_refused_before_training(
    tmp_path, cifar, release, run_main
):
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    before = tree(tmp_path)
    result = run_main("code/train.py", "--data", str(cifar), *TRAIN_FLAGS, "--run-dir", str(taken))
    one_line_exit_2(result, "exists and is not a directory")
    result = run_main(
        "code/train.py", "--data", str(cifar), *TRAIN_FLAGS, "--run-dir", str(taken / "sub")
    )
    one_line_exit_2(result, "Not a directory")
    result = run_main("code/evaluate.py", "--checkpoint", str(release), "--report-dir", str(taken))
    one_line_exit_2(result, "exists and is not a directory")
    assert tree(tmp_path) == before and taken.read_text() == "keep me\n"
