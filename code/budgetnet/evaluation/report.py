"""The evaluation report: an ensemble scored on a labeled split at several TTA levels, with
per-class metrics, calibration and the corruption sweep, written as JSON and Markdown.

Every number starts from the class probabilities of `Ensemble.probs` (hence of
`budgetnet.evaluation.infer.infer`, the function inference.py labels the Kaggle pickle with),
so what is measured here is what a submission made with the same checkpoints and TTA level
would do. The metrics themselves are `budgetnet.evaluation.metrics`'.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from budgetnet import runs
from budgetnet.data.sources import ImageSet, split_train_val
from budgetnet.errors import UserError
from budgetnet.evaluation.corruptions import CORRUPTIONS, corrupt
from budgetnet.evaluation.ensemble import Ensemble
from budgetnet.evaluation.figures import write_evaluation_plots
from budgetnet.evaluation.infer import view_count
from budgetnet.evaluation.metrics import (
    ECE_BINS,
    Reliability,
    confusion_matrix,
    metrics,
    per_class_metrics,
    reliability,
)
from budgetnet.files import atomic_write
from budgetnet.runtime import precision_name
from budgetnet.tables import markdown_table, percent


@dataclass
class Evaluation:
    report: dict  # everything the JSON and Markdown reports hold
    images: ImageSet
    probs: np.ndarray  # at the report's main TTA level

    @property
    def reliability(self) -> Reliability:
        return reliability(self.probs, self.images.labels)


# --------------------------------------------------------------------------------------------
# The evaluation


def stratified_sample(images: ImageSet, count: int, seed: int) -> np.ndarray:
    """Indices of `count` images, every class in proportion (the validation split's draw)."""
    try:
        return split_train_val(images.labels, count, seed)[1]
    except UserError:
        raise UserError(
            f"cannot draw a stratified sample of {count} from {len(images)} images of "
            f"{len(images.classes)} classes: every class needs images in and out of it"
        ) from None


def corruption_report(
    ensemble: Ensemble,
    images: ImageSet,
    names: list[str],
    severities: list[int],
    *,
    sample_size: int | None,
    seed: int,
    tta: int,
    clean_acc: float | None = None,
    **run,
) -> dict:
    """Accuracy under every corruption at every severity (`acc`: {name: {severity: acc}}), on
    the images or a stratified sample of `sample_size`, beside the clean accuracy there.

    `clean_acc`, the caller's accuracy of this ensemble on all of `images` at this `tta`,
    saves an inference pass; it is ignored when a sample is drawn (it is not the sample's)."""
    if sample_size is not None and sample_size < len(images):
        images = images.subset(stratified_sample(images, sample_size, seed))
        clean_acc = None

    def acc(pixels: np.ndarray) -> float:
        probs = ensemble.probs(pixels, tta=tta, **run)
        return float((probs.argmax(axis=1) == images.labels).mean())

    table = {
        name: {str(s): acc(corrupt(images.images, name, s, seed)) for s in severities}
        for name in names
    }
    return {
        "images": len(images),
        "tta": tta,
        "seed": seed,
        "clean_acc": acc(images.images) if clean_acc is None else clean_acc,
        "acc": table,
        "mean_acc": float(np.mean([a for row in table.values() for a in row.values()])),
    }


def _tta_row(ensemble: Ensemble, images: ImageSet, level: int, **run) -> tuple[dict, np.ndarray]:
    """`metrics` and speed at one TTA level, and the probabilities they came from."""
    start = time.perf_counter()
    probs = ensemble.probs(images.images, tta=level, **run)
    seconds = time.perf_counter() - start
    row = {
        "level": level,
        "views": view_count(level),
        **metrics(probs, images.labels),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(images) / seconds, 1),
    }
    return row, probs


def _curve(curve: Reliability) -> dict:
    return {
        "bins": len(curve.count),
        "confidence": curve.confidence.tolist(),
        "acc": curve.acc.tolist(),
        "count": curve.count.tolist(),
    }


def evaluate_ensemble(
    ensemble: Ensemble,
    images: ImageSet,
    *,
    split: str,
    tta_levels: list[int],
    batch_size: int,
    device: torch.device,
    amp: bool = True,
    corruptions: list[str] | None = None,
    severities: list[int] = (),
    corruption_images: int | None = None,
    seed: int = 0,
) -> Evaluation:
    """Metrics at every TTA level in `tta_levels`; the per-class table, plots and corruption
    sweep use the highest (the level a submission would use)."""
    run = {"batch_size": batch_size, "device": device, "amp": amp}
    rows = []
    for level in sorted(set(tta_levels)):
        row, probs = _tta_row(ensemble, images, level, **run)
        rows.append(row)
    main = rows[-1]["level"]  # and `probs` are this highest level's
    report = {
        "checkpoints": [str(r.path) for r in ensemble.releases],
        "split": split,
        "source": images.source,
        "images": len(images),
        "classes": ensemble.classes,
        "device": str(device),
        "precision": precision_name(device, amp),
        "tta": rows,
        "main_tta": main,
        "per_class": per_class_metrics(probs, images.labels, ensemble.classes),
        "confusion_matrix": confusion_matrix(probs, images.labels).tolist(),
        "reliability": _curve(reliability(probs, images.labels)),
    }
    if corruptions is not None:
        # rows[-1] scored this ensemble on these images at TTA `main`, as the sweep's clean
        # pass would (the same `run` too): its accuracy is that pass's, without the pass
        report["corruptions"] = corruption_report(
            ensemble, images, corruptions or list(CORRUPTIONS), list(severities),
            sample_size=corruption_images, seed=seed, tta=main, clean_acc=rows[-1]["acc"], **run,
        )  # fmt: skip
    return Evaluation(report, images, probs)


# --------------------------------------------------------------------------------------------
# Writing it: JSON, Markdown and the figures


def _tta_table(report: dict) -> str:
    # `metrics` gives top-5 only above TOP5_ABOVE_CLASSES classes: a column only then.
    top5 = any("top5" in r for r in report["tta"])
    keys = ["acc", *(["top5"] if top5 else []), "macro_map", "ece"]
    header = ["TTA", "views", "accuracy %", *(["top-5 %"] if top5 else []), "macro mAP %"]
    rows = [
        [r["level"], r["views"], *(percent(r[k]) for k in keys), round(r["images_per_second"])]
        for r in report["tta"]
    ]
    return markdown_table([*header, f"ECE % ({ECE_BINS} bins)", "images/s"], rows)


def _per_class_table(report: dict, main: dict) -> str:
    per_class = report["per_class"]
    rows = [
        [c["class"], percent(c["precision"]), percent(c["recall"]), percent(c["f1"]),
         percent(c["average_precision"]), c["support"]]
        for c in per_class
    ]  # fmt: skip
    macro = [np.mean([c[key] for c in per_class]) for key in ("precision", "recall", "f1")]
    rows.append(["**macro mean**", *map(percent, macro), percent(main["macro_map"]),
                 sum(c["support"] for c in per_class)])  # fmt: skip
    return markdown_table(
        ["class", "precision %", "recall (accuracy) %", "F1 %", "AP %", "support"], rows
    )


def _corruption_section(sweep: dict) -> list[str]:
    severities = list(next(iter(sweep["acc"].values())))
    rows = [
        [name, *(percent(row[s]) for s in severities), percent(np.mean(list(row.values())))]
        for name, row in sweep["acc"].items()
    ]
    return [
        "",
        f"## Robustness to common corruptions (TTA {sweep['tta']}, {sweep['images']} images)",
        "",
        f"Accuracy % on the clean images: {percent(sweep['clean_acc'])}; mean over the "
        f"corruptions below: {percent(sweep['mean_acc'])}.",
        "",
        markdown_table(["corruption", *(f"severity {s}" for s in severities), "mean"], rows),
    ]


def markdown_report(report: dict, plots: dict[str, Path], relative_to: Path) -> str:
    """The report as Markdown; `plots` (name -> PNG) are linked relative to `relative_to`."""
    main = next(r for r in report["tta"] if r["level"] == report["main_tta"])
    several = len(report["checkpoints"]) > 1
    lines = [
        f"# Evaluation on the {report['split']} split",
        "",
        f"- checkpoint{'s (probabilities averaged)' if several else ''}: "
        + ", ".join(f"`{c}`" for c in report["checkpoints"]),
        f"- data: {report['source']} ({report['images']} images)",
        f"- run on {report['device']}, {report['precision']}",
        "",
        "## Accuracy by test-time augmentation level",
        "",
        _tta_table(report),
        "",
        f"## Per class (TTA {main['level']})",
        "",
        _per_class_table(report, main),
    ]
    if "corruptions" in report:
        lines += _corruption_section(report["corruptions"])
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({Path(os.path.relpath(path, relative_to)).as_posix()})"
                  for name, path in plots.items()]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report_markdown(path: str | Path, report: dict, plots: dict[str, Path]) -> Path:
    path = Path(path)
    text = markdown_report(report, plots, path.parent)
    with atomic_write(path) as handle:
        handle.write(text)
    return path


@dataclass
class ReportFiles:
    json: Path
    markdown: Path
    plots: dict[str, Path]  # figure name -> PNG


def write_report(
    evaluation: Evaluation, report_dir: str | Path, plots_dir: str | Path
) -> ReportFiles:
    """`report_dir/evaluation-<split>.json` and `.md`, and the figures as
    `plots_dir/<split>-<name>.png` (linked from the Markdown)."""
    split = evaluation.report["split"]
    plots = write_evaluation_plots(evaluation, plots_dir, split)
    json_path = Path(report_dir) / f"evaluation-{split}.json"
    runs.write_json(json_path, evaluation.report)
    markdown = write_report_markdown(
        Path(report_dir) / f"evaluation-{split}.md", evaluation.report, plots
    )
    return ReportFiles(json_path, markdown, plots)
