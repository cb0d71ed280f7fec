"""Uploading a submission with the official `kaggle` command-line tool, or saying how to.

The tool reads its API token from $KAGGLE_CONFIG_DIR/kaggle.json (default ~/.kaggle) or from
$KAGGLE_USERNAME and $KAGGLE_KEY; the competition is named by its slug, the last part of its
address (kaggle.com/competitions/<slug>).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from budgetnet.errors import UserError

COMPETITION_ENV = "KAGGLE_COMPETITION"
TOKEN_FILE = "kaggle.json"


def token_path(env: Mapping[str, str]) -> Path:
    return Path(env.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle") / TOKEN_FILE


def missing_setup(competition: str | None, tool: str | None, env: Mapping[str, str]) -> list[str]:
    """What stands between this machine and an upload, each as an instruction."""
    missing = []
    if not competition:
        missing.append(
            f"name the competition: --competition SLUG or ${COMPETITION_ENV}=SLUG "
            "(SLUG as in kaggle.com/competitions/SLUG)"
        )
    if tool is None:
        missing.append("install the official Kaggle tool: pip install kaggle")
    has_env_token = env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")
    if not has_env_token and not token_path(env).is_file():
        missing.append(
            f"create an API token (kaggle.com > Settings > API > Create New Token) "
            f"and save it as {token_path(env)} (chmod 600), or set KAGGLE_USERNAME "
            "and KAGGLE_KEY"
        )
    return missing


def submit(
    csv: str | Path, message: str, competition: str | None, env: Mapping[str, str] | None = None
) -> None:
    """Run `kaggle competitions submit`; if it cannot be run, print what to set up and raise a
    UserError that says the CSV is there to upload by hand."""
    env = os.environ if env is None else env
    tool = shutil.which("kaggle", path=env.get("PATH"))
    missing = missing_setup(competition, tool, env)
    if missing:
        print("to upload from here:")
        for step in missing:
            print(f"  - {step}")
        where = (
            f"https://www.kaggle.com/competitions/{competition}/submit"
            if competition
            else "the competition's Submit Predictions page"
        )
        print(f"or upload {Path(csv).resolve()} by hand at {where}")
        raise UserError(
            f"--submit: not uploaded ({len(missing)} setup step"
            f"{'s' if len(missing) > 1 else ''} missing, listed above); {csv} is "
            "written and checked"
        )
    command = [tool, "competitions", "submit", "-c", competition, "-f", str(csv), "-m", message]
    print(f"uploading: {shlex.join(command)}", flush=True)
    result = subprocess.run(command, env=dict(env), check=False)
    if result.returncode != 0:
        raise UserError(
            f"--submit: kaggle exited with status {result.returncode} (its message "
            f"is above); {csv} is written and checked, upload it by hand if need be"
        )
