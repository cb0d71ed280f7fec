from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from budgetnet.errors import run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_cifar10() -> Path:
    """The real CIFAR-10 image folder named by BUDGETNET_DATA (CI sets it); skip without it."""
    value = os.environ.get("BUDGETNET_DATA")
    if not value:
        pytest.skip(
            "BUDGETNET_DATA is not set: point it at ../shared/data/cifar10 to run the "
            "tests that read real data"
        )
    path = Path(value)
    if not (path / "train").is_dir() or not (path / "test").is_dir():
        pytest.skip(f"BUDGETNET_DATA={value} has no train/ and test/ folders")
    return path


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    """CIFAR-10 python batches with 200 training and 50 test images (a module may define its
    own `cifar` of another size)."""
    from cifar_files import write_cifar10

    folder = tmp_path_factory.mktemp("cifar")
    write_cifar10(folder, per_batch=40, test_count=50)
    return folder


@pytest.fixture
def run_script(tmp_path):
    """Run a repository script as a user would, in a new Python process, from the repository
    root; returns the result. Costs seconds of imports: use `run_main` unless the process
    itself matters (its exit status after a crash, a signal, its memory, a clean import state,
    or one end-to-end run per user-facing command).

    The data cache goes to a temporary folder so tests never touch the user's."""

    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "BUDGETNET_CACHE": str(tmp_path / "cache"), **(env or {})}
        return subprocess.run(
            [sys.executable, *args],
            cwd=REPO,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run


def run_in_process(
    script: str, *args: str, cache: Path, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a repository script's `main` in this process as `python <script> <args>` would:
    through `budgetnet.errors.run_cli`, from the repository root, with sys.argv set, the data
    cache in `cache` and `env` added to the environment (all undone afterwards). Returns what
    `run_script` returns: a CompletedProcess with the exit status and what was printed to
    sys.stdout and sys.stderr.

    Output written straight to the file descriptors (by a child process) is not captured. The
    scripts set up the CPU in this process too (`budgetnet.runtime.configure_cpu`: the thread
    count, unchanged at its default here, and glibc's malloc thresholds), as the in-process
    training tests already do."""
    module = importlib.import_module(Path(script).stem)  # code/ and the root are on the path
    assert Path(module.__file__).resolve() == (REPO / script).resolve(), module.__file__
    out, err = io.StringIO(), io.StringIO()
    code = 0  # run_cli always exits, with main's status or 2 for a UserError
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        patch.setenv("BUDGETNET_CACHE", str(cache))
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        patch.setattr(sys, "argv", [script, *args])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_cli(module.main, list(args))
            except SystemExit as exit_:
                code = exit_.code
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, status 1, as Python does
        err.write(f"{code}\n")
        code = 1
    return subprocess.CompletedProcess(
        [script, *args], code, stdout=out.getvalue(), stderr=err.getvalue()
    )


@pytest.fixture
def run_main(tmp_path):
    """`run_script` in this process (`run_in_process`): the same call, the same result, without
    a new interpreter's seconds of imports."""

    def run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return run_in_process(script, *args, cache=tmp_path / "cache", env=env)

    return run


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A release of a random tiny network (a module may define its own `release`)."""
    from tiny import save_random_release

    return save_random_release(tmp_path_factory.mktemp("release") / "m", 1)


@pytest.fixture
def pkl(tmp_path) -> Path:
    """A Kaggle-style unlabeled pickle of 6 random images with ids 5 9 1 7 3 8."""
    import numpy as np

    from budgetnet.data.kaggle import write_unlabeled_pickle

    from cifar_files import random_images

    path = tmp_path / "test.pkl"
    write_unlabeled_pickle(path, random_images(6, seed=2), np.array([5, 9, 1, 7, 3, 8]))
    return path
