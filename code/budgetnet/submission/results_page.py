"""The results page, docs/results.md: a row per published run (test accuracy at TTA 0/1/2,
under corruptions, its cost and its command), kept in docs/results/runs.json.

A row is built only from files the run and the evaluation wrote (config.yaml, results.json, the
evaluation report), so every figure on the page comes from a command; `FinishedRun` is those
files of the run, read and checked before anything slow starts.
"""

from __future__ import annotations

import datetime
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budgetnet import runs
from budgetnet.errors import UserError
from budgetnet.evaluation.corruptions import DEFAULT_SEVERITIES
from budgetnet.evaluation.report import EvaluationReport
from budgetnet.files import atomic_write
from budgetnet.models import checkpoint
from budgetnet.models.complexity import count_flops, count_params
from budgetnet.models.spec import ResNetSpec
from budgetnet.runtime import cpu_model
from budgetnet.tables import markdown_table, percent

RUN_FILES = ("config.yaml", "history.csv", "results.json")
ROWS_FILE = "runs.json"


@dataclass(frozen=True)
class FinishedRun:
    """A run directory with its config.yaml and results.json, read and checked."""

    path: Path
    record: dict  # config.yaml (runs.read_config): settings, model, data, provenance
    results: dict
    spec: ResNetSpec


def check_run(run_dir: Path) -> FinishedRun:
    """Everything publishing reads from the run, checked before the slow evaluation."""
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    if not (run_dir / checkpoint.BEST_DIR / checkpoint.META_FILE).is_file():
        missing.append(f"{checkpoint.BEST_DIR}/{checkpoint.META_FILE}")
    if missing:
        raise UserError(
            f"{run_dir}: not a finished run (missing {', '.join(missing)}); publish a run "
            "directory that `python code/train.py` completed"
        )
    record = runs.read_config(run_dir)
    results = runs.read_json(run_dir / "results.json")
    wanted = {"results.json": (results, ("epochs_run", "train_seconds"))}
    wanted["config.yaml settings"] = (record[runs.SETTINGS_KEY], ("val_size", "seed"))
    for where, (values, keys) in wanted.items():
        bad = [k for k in keys if not _is_number(values.get(k))]
        if bad:
            raise UserError(f"{run_dir}: {where} has no number for {', '.join(bad)}")
    return FinishedRun(run_dir, record, results, ResNetSpec.from_dict(record["model"]))


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but True is no count of epochs
    return isinstance(value, int | float) and not isinstance(value, bool)


def run_row(run: FinishedRun, report: EvaluationReport) -> dict:
    """One row of the results table, from the run's own files and its evaluation report
    (which holds a corruption sweep, as `release.evaluate_release`'s always does)."""
    settings, results, spec = run.record[runs.SETTINGS_KEY], run.results, run.spec
    provenance = run.record.get("provenance")
    provenance = provenance if isinstance(provenance, dict) else {}
    sweep = report.corruptions
    return {
        "run": run.path.name,
        "model": f"{spec.block} {list(spec.blocks)} {list(spec.channels)} stem {spec.stem}",
        "parameters": count_params(spec),
        "flops": count_flops(spec).flops,
        "epochs": results["epochs_run"],
        "train_seconds": results["train_seconds"],
        "device": provenance.get("cpu") or f"CPU, model not recorded (published on {cpu_model()})",
        "val_size": settings["val_size"],
        "val_acc": results.get("val_acc"),
        "test_acc": {str(row.level): row.acc for row in report.tta},
        "corruptions": sweep.mean_by_corruption(),
        "corruption_images": sweep.images,
        "corruption_clean": sweep.clean_acc,
        "command": provenance.get("command"),
        "git_revision": provenance.get("git_revision"),
        "seed": settings["seed"],
    }


RUNS_HEADER = (
    "run", "model", "parameters", "FLOPs/image", "epochs", "train s", "trained on",
    "val acc (%)", "test TTA 0 (%)", "TTA 1 (%)", "TTA 2 (%)",
)  # fmt: skip


def results_markdown(rows: list[dict], release: str | None, argv: list[str]) -> str:
    """docs/results.md: a row per run, its accuracy under corruptions and its command."""
    main = [
        (
            r["run"], r["model"], r["parameters"], r["flops"], r["epochs"],
            round(r["train_seconds"]), r["device"],
            percent(r["val_acc"]) if r["val_size"] else "none held out",
            *(percent(r["test_acc"].get(level)) for level in ("0", "1", "2")),
        )
        for r in rows
    ]  # fmt: skip
    # Rows measured before a corruption joined the sweep lack it: n/a there, and the mean is
    # over the corruptions every row has, so the means stay comparable.
    names = list(dict.fromkeys(n for r in rows for n in r["corruptions"]))
    shared = [n for n in names if all(n in r["corruptions"] for r in rows)]
    robust = [
        (
            r["run"], r["corruption_images"], percent(r["corruption_clean"]),
            *(percent(r["corruptions"].get(n)) for n in names),
            percent(statistics.mean(r["corruptions"][n] for n in shared)),
        )
        for r in rows
    ]  # fmt: skip
    lines = [
        "# Results",
        "",
        f"Written by `python code/publish.py` (last: `{' '.join(argv)}`, "
        f"{datetime.date.today()}); every figure comes from the run's own files and the "
        "evaluation below. Test accuracy is on CIFAR-10's 10,000 test images of the shared JPEG "
        "copy; no checkpoint was chosen on them.",
        "",
        f"The release in `trained_model/` is **{release}**." if release else "",
        "",
        markdown_table(RUNS_HEADER, main),
        "",
        f"Accuracy (%) under corruptions at TTA 2, the mean over severities "
        f"{', '.join(map(str, DEFAULT_SEVERITIES))}, on a stratified sample of the test split "
        "(`code/evaluate.py --corruptions`):",
        "",
        markdown_table(
            ["run", "images", "clean", *names, "mean" + _mean_note(names, shared)], robust
        ),
        "",
        "## Commands",
        "",
        *(f"- {r['run']} (seed {r['seed']}, {r['git_revision']}): `{r['command']}`" for r in rows),
        "",
        "The release run's `config.yaml` and `history.csv`, and its evaluation report, are in "
        "[results/](results/); its figures are in [plots/](../plots/).",
    ]
    return "\n".join(lines) + "\n"


def _mean_note(names: list[str], shared: list[str]) -> str:
    return "" if shared == names else f" (of the {len(shared)} every row has)"


def read_rows(results_dir: Path) -> list[dict]:
    """The rows already in results_dir/runs.json (none if there is no such file yet)."""
    path = results_dir / ROWS_FILE
    if not path.exists():
        return []
    rows = runs.read_json(path, list)
    if not all(isinstance(r, dict) and isinstance(r.get("run"), str) for r in rows):
        raise UserError(f"{path}: expected a list of rows, each with its run's name")
    return rows


def record_row(results_dir: Path, rows: list[dict], row: dict) -> list[dict]:
    """Add (or replace) a run's row among `rows` and write them to results_dir/runs.json."""
    rows = [r for r in rows if r["run"] != row["run"]] + [row]
    runs.write_json(results_dir / ROWS_FILE, rows)
    return rows


def write_results_page(
    results_md: Path, rows: list[dict], release: str | None, argv: list[str]
) -> None:
    with atomic_write(results_md) as handle:
        handle.write(results_markdown(rows, release, argv))
