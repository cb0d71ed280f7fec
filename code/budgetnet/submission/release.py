"""Publishing a run: its release becomes `trained_model/` (what `inference.py` loads by default),
its curves and test-split figures go to `plots/`, and the results page (`docs/results.md`, see
`results_page`) gains its row.

    python code/publish.py runs/<name> --data ../shared/data/cifar10

`--row-only` adds a run's row without publishing its model.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from budgetnet import runs
from budgetnet.evaluation.corruptions import DEFAULT_SEVERITIES
from budgetnet.evaluation.ensemble import labeled_split, load_ensemble
from budgetnet.evaluation.infer import BATCH_SIZE
from budgetnet.evaluation.report import EvaluationReport, evaluate_ensemble, write_report
from budgetnet.models import checkpoint
from budgetnet.models.complexity import PARAMETER_BUDGET
from budgetnet.runtime import resolve_device
from budgetnet.submission.results_page import (
    RUN_FILES,
    FinishedRun,
    check_run,
    read_rows,
    record_row,
    run_row,
    write_results_page,
)

CURVES = ("loss_curve.png", "accuracy_curve.png", "lr_curve.png")


def _replace_folder(staged: Path, out: Path) -> None:
    """Put the folder `staged` where `out` is, never leaving `out` half-written."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    staged.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish_release(run: FinishedRun, out: Path) -> Path:
    """Copy the run's release (its best model) to `out` with the test metrics and a record of
    the publishing; the folder is staged beside `out` and renamed into place."""
    run_dir = run.path
    # refuses a release that does not load, or that the competition's budget does not allow
    release = checkpoint.load_release(run_dir, max_params=PARAMETER_BUDGET)
    meta = dict(release.meta)
    metrics = {k: v for k, v in run.results.items() if k != "run_dir"}
    meta["metrics"] = {**meta["metrics"], **metrics}
    meta["provenance"] = {
        **meta["provenance"],
        "published": {
            **runs.provenance(meta["provenance"].get("seed", 0)),
            "from_run": run_dir.name,
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        shutil.copyfile(release.path / checkpoint.WEIGHTS_FILE, staged / checkpoint.WEIGHTS_FILE)
        (staged / checkpoint.META_FILE).write_text(json.dumps(meta, indent=2))
        staged.chmod(0o755)  # mkdtemp makes it private
        checkpoint.load_release(staged)  # what inference will load, checked before it is live
        _replace_folder(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return out


def evaluate_release(
    folder: Path, data: str | None, report_dir: Path, plots_dir: Path, corruption_images: int
) -> EvaluationReport:
    """The test split at TTA 0, 1 and 2 plus the corruption sweep (at TTA 2, on a stratified
    sample); the report and figures are written, the report returned."""
    device = resolve_device("auto")
    ensemble = load_ensemble([folder], device, max_params=PARAMETER_BUDGET)
    images = labeled_split(ensemble, "test", data)
    result = evaluate_ensemble(
        ensemble,
        images,
        split="test",
        tta_levels=[0, 1, 2],
        batch_size=BATCH_SIZE,
        device=device,
        corruptions=[],
        severities=list(DEFAULT_SEVERITIES),
        corruption_images=corruption_images,
    )
    write_report(result, report_dir, plots_dir)
    return result.report


def _release_name(out: Path) -> str | None:
    """The run the release in `out` was published from (None: no release there)."""
    path = out / checkpoint.META_FILE
    if not path.exists():
        return None
    provenance = runs.read_json(path).get("provenance")
    published = provenance.get("published") if isinstance(provenance, dict) else None
    return published.get("from_run") if isinstance(published, dict) else None


def publish(
    run_dir: Path,
    *,
    out: Path,
    plots_dir: Path,
    results_md: Path,
    data: str | None,
    corruption_images: int,
    row_only: bool = False,
    argv: list[str] | None = None,
) -> list[dict]:
    """Evaluate the run's release, ship it in `out` (unless `row_only`) and give it its row on
    the results page `results_md`; returns the page's rows, the run's last."""
    run = check_run(run_dir)
    results_dir = results_md.with_suffix("")  # docs/results.md -> docs/results/
    rows = read_rows(results_dir)  # read before the evaluation, so a broken file fails fast
    if row_only:
        release = _release_name(out)
        report_dir = results_dir / run_dir.name
        report = evaluate_release(
            run_dir / checkpoint.BEST_DIR, data, report_dir, report_dir, corruption_images
        )
    else:
        # Scored before it replaces anything: a release that gives non-finite probabilities or
        # breaks the budget is refused while the shipped one is still in place.
        report = evaluate_release(
            run_dir / checkpoint.BEST_DIR, data, results_dir, plots_dir, corruption_images
        )
        publish_release(run, out)
        release = run_dir.name  # what publish_release recorded as from_run
        for name in RUN_FILES:
            shutil.copyfile(run_dir / name, results_dir / name)
        for name in CURVES:
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, plots_dir / name)
    rows = record_row(results_dir, rows, run_row(run, report))
    write_results_page(results_md, rows, release, argv or sys.argv)
    return rows
