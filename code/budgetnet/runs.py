"""A run directory: what was run (resolved settings, seed, git revision, command line), how it
went (history.csv), and where its checkpoints are. Everything a result needs to be rebuilt.

    runs/<name>/config.yaml   the run record: `settings` (the resolved training settings by
                              their flat names), `model` (the spec), `data`, `normalization`,
                              `provenance`
    runs/<name>/history.csv   one row per epoch
    runs/<name>/last.pt       resume state, rewritten atomically every epoch
    runs/<name>/best/         the best model by validation accuracy, as a release
    runs/<name>/results.json  final metrics (validation, and test reported separately)
    runs/<name>/*.png         loss, accuracy and learning-rate curves, the test confusion matrix,
                              a grid of augmented training images
    runs/<name>/training_log.md   the Markdown log (settings, per-epoch table, best and final)
    (with --tensorboard / --mlflow: event files, mlflow_run_id.txt)
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from budgetnet.errors import UserError, brief, shorten
from budgetnet.files import MAX_YAML_BYTES, atomic_write, read_regular_file, read_yaml

HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
    "images_per_s",
)
REPO_ROOT = Path(__file__).resolve().parents[2]
# config.yaml's key for the training settings (`TrainConfig.flat()`), and the key that run
# directories written before it was named hold them under (read the same).
SETTINGS_KEY = "settings"
OLD_SETTINGS_KEY = "config"
# A row per epoch is under 200 bytes: far more epochs than any schedule runs.
MAX_HISTORY_BYTES = 64 << 20


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def git_revision() -> str | None:
    """The commit of this code, with "-dirty" if it has uncommitted changes; None outside git."""
    try:
        rev = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def provenance(seed: int, argv: list[str] | None = None) -> dict:
    import torch

    from budgetnet.runtime import cpu_model

    return {
        "seed": seed,
        "git_revision": git_revision(),
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
    }


def default_run_dir(model_name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{model_name}"


def _present(path: Path) -> bool:
    """Whether `path` exists (a missing folder above it, or a file where a folder should be,
    means no); an OSError that says nothing about that (a name too long, a link loop) is a
    UserError."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    return True


def write_config(run_dir: Path, record: dict) -> None:
    """config.yaml: the run record (`engine.run_record`), its keys in their order."""
    with atomic_write(run_dir / "config.yaml") as handle:
        yaml.safe_dump(record, handle, sort_keys=False)


def read_config(run_dir: Path) -> dict:
    """A run's config.yaml, checked to hold the `settings` and `model` mappings it must.

    The one reader of run records: a record that holds its settings under OLD_SETTINGS_KEY
    reads as one under `settings`, so every run directory resumes and publishes."""
    path = Path(run_dir) / "config.yaml"
    if not _present(path):
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    saved = read_yaml(path, "config.yaml")
    if not isinstance(saved, dict):
        raise UserError(f"{path}: holds {brief(saved)}, expected the run's settings")
    if SETTINGS_KEY not in saved and OLD_SETTINGS_KEY in saved:
        saved = {SETTINGS_KEY if k == OLD_SETTINGS_KEY else k: v for k, v in saved.items()}
    missing = [k for k in (SETTINGS_KEY, "model") if not isinstance(saved.get(k), dict)]
    if missing:
        named = " or ".join({SETTINGS_KEY: "training", "model": "model"}[k] for k in missing)
        raise UserError(f"{path}: has no {named} settings (not a finished setup?)")
    return saved


def write_history(run_dir: Path, rows: list[dict]) -> None:
    with atomic_write(run_dir / "history.csv", newline="") as handle:
        writer = csv.DictWriter(handle, HISTORY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.csv"
    if not _present(path):
        return []
    raw = read_regular_file(path, MAX_HISTORY_BYTES, "history.csv")
    try:
        rows = csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))
        return [
            {k: (int(v) if k == "epoch" else float(v) if v else None) for k, v in row.items()}
            for row in rows
        ]
    except (ValueError, TypeError, csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable history ({shorten(str(exc))})") from None


def write_json(path: Path, payload: dict | list) -> None:
    with atomic_write(path) as handle:
        json.dump(payload, handle, indent=2)


def read_json(path: Path, expected: type = dict) -> Any:
    """A JSON file written by write_json (results.json, runs.json, a release's metadata),
    size-capped, whose top level must be `expected` (an object unless told)."""
    path = Path(path)
    raw = read_regular_file(path, MAX_YAML_BYTES, f"{path.name} file")
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise UserError(f"{path}: not valid JSON ({shorten(' '.join(str(exc).split()))})") from None
    if not isinstance(payload, expected):
        kind = "an object" if expected is dict else f"a {expected.__name__}"
        raise UserError(f"{path}: holds {brief(payload)}, expected {kind}")
    return payload
