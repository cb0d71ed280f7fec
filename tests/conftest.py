from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    """Run a repository script as a user would, from the repository root; returns the result.

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
