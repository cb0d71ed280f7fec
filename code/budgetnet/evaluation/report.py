"""The evaluation report: an ensemble scored on a labeled split at several TTA levels, with
per-class metrics, calibration and the corruption sweep (`EvaluationReport`, which becomes JSON
only when written), its Markdown and its figures.

Every number starts from the class probabilities of `Ensemble.probs` (hence of
`budgetnet.evaluation.infer.infer`, the function inference.py labels the Kaggle pickle with),
so what is measured here is what a submission made with the same checkpoints and TTA level
would do. The metrics themselves are `budgetnet.evaluation.metrics`'.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from budgetnet import runs
from budgetnet.data.sources import ImageSet, split_train_val
from budgetnet.errors import UserError
from budgetnet.evaluation.corruptions import CORRUPTIONS, corrupt
from budgetnet.evaluation.ensemble import Ensemble
from budgetnet.evaluation.figures import (
    confusion_figure,
    misclassified_figure,
    per_class_accuracy_figure,
    reliability_figure,
    save_figure,
)
from budgetnet.evaluation.infer import view_count
from budgetnet.evaluation.metrics import (
    ECE_BINS,
    ClassScore,
    Reliability,
    confusion_matrix,
    metrics,
    per_class_metrics,
    reliability,
)
from budgetnet.files import atomic_write
from budgetnet.runtime import precision_name
from budgetnet.tables import markdown_table, percent

# --------------------------------------------------------------------------------------------
# The report, typed; JSON only at the edge (to_json / from_json). The files' keys and their
# order are the evaluation-*.json format, so every report written reads back.


@dataclass(frozen=True)
class TTAScore:
    """`metrics` of the ensemble at one TTA level, and how fast it ran there."""

    level: int
    views: int  # of each image, averaged
    loss: float
    acc: float
    macro_map: float
    ece: float
    seconds: float
    images_per_second: float
    top5: float | None = None  # `metrics` gives it above TOP5_ABOVE_CLASSES classes only

    def to_json(self) -> dict:
        top5 = {} if self.top5 is None else {"top5": self.top5}
        return {
            "level": self.level, "views": self.views, "loss": self.loss, "acc": self.acc,
            **top5, "macro_map": self.macro_map, "ece": self.ece, "seconds": self.seconds,
            "images_per_second": self.images_per_second,
        }  # fmt: skip

    @classmethod
    def from_json(cls, row: dict) -> TTAScore:
        return cls(**row)


@dataclass(frozen=True)
class CorruptionSweep:
    """Accuracy under every corruption at every severity, on `images` images (the split or a
    stratified sample of it, drawn with `seed`), beside the clean accuracy there."""

    images: int  # how many were scored
    tta: int
    seed: int
    clean_acc: float
    acc: dict[str, dict[int, float]]  # corruption -> severity -> accuracy

    @property
    def mean_acc(self) -> float:
        """Over every corruption and severity."""
        return float(np.mean([a for row in self.acc.values() for a in row.values()]))

    def mean_by_corruption(self) -> dict[str, float]:
        """Each corruption's accuracy, the mean over its severities."""
        return {name: statistics.mean(row.values()) for name, row in self.acc.items()}

    def to_json(self) -> dict:
        return {
            "images": self.images, "tta": self.tta, "seed": self.seed,
            "clean_acc": self.clean_acc,
            "acc": {name: {str(s): a for s, a in row.items()} for name, row in self.acc.items()},
            "mean_acc": self.mean_acc,
        }  # fmt: skip

    @classmethod
    def from_json(cls, sweep: dict) -> CorruptionSweep:
        acc = {name: {int(s): a for s, a in row.items()} for name, row in sweep["acc"].items()}
        return cls(sweep["images"], sweep["tta"], sweep["seed"], sweep["clean_acc"], acc)


@dataclass(frozen=True, eq=False)  # holds arrays: compare reports by their to_json()
class EvaluationReport:
    """Everything the JSON and Markdown reports hold."""

    checkpoints: tuple[str, ...]  # the releases whose probabilities were averaged
    split: str
    source: str
    images: int  # how many were scored
    classes: tuple[str, ...]
    device: str
    precision: str
    tta: tuple[TTAScore, ...]  # by level, lowest first
    main_tta: int  # the level of the per-class table, the plots and the corruption sweep
    per_class: tuple[ClassScore, ...]
    confusion_matrix: np.ndarray  # counts[true, predicted]
    reliability: Reliability
    corruptions: CorruptionSweep | None = None

    def __post_init__(self) -> None:
        if not any(row.level == self.main_tta for row in self.tta):
            raise ValueError(f"the report scores no TTA level {self.main_tta} (its main level)")

    @property
    def main(self) -> TTAScore:
        """The score at the main TTA level."""
        return next(row for row in self.tta if row.level == self.main_tta)

    def to_json(self) -> dict:
        sweep = {} if self.corruptions is None else {"corruptions": self.corruptions.to_json()}
        return {
            "checkpoints": list(self.checkpoints), "split": self.split, "source": self.source,
            "images": self.images, "classes": list(self.classes), "device": self.device,
            "precision": self.precision, "tta": [row.to_json() for row in self.tta],
            "main_tta": self.main_tta, "per_class": [_class_json(c) for c in self.per_class],
            "confusion_matrix": self.confusion_matrix.tolist(),
            "reliability": _reliability_json(self.reliability), **sweep,
        }  # fmt: skip

    @classmethod
    def from_json(cls, report: dict) -> EvaluationReport:
        sweep = report.get("corruptions")
        return cls(
            checkpoints=tuple(report["checkpoints"]), split=report["split"],
            source=report["source"], images=report["images"], classes=tuple(report["classes"]),
            device=report["device"], precision=report["precision"],
            tta=tuple(map(TTAScore.from_json, report["tta"])), main_tta=report["main_tta"],
            per_class=tuple(map(_class_from_json, report["per_class"])),
            confusion_matrix=np.asarray(report["confusion_matrix"], dtype=np.int64),
            reliability=_reliability_from_json(report["reliability"]),
            corruptions=None if sweep is None else CorruptionSweep.from_json(sweep),
        )  # fmt: skip


# The metrics' own types in the report's JSON (the format is the report's, not the metrics').


def _class_json(score: ClassScore) -> dict:
    return {
        "class": score.name, "precision": score.precision, "recall": score.recall,
        "f1": score.f1, "average_precision": score.average_precision, "support": score.support,
    }  # fmt: skip


def _class_from_json(row: dict) -> ClassScore:
    fields = ("precision", "recall", "f1", "average_precision", "support")
    return ClassScore(row["class"], *(row[key] for key in fields))


def _reliability_json(curve: Reliability) -> dict:
    return {
        "bins": len(curve.count),
        "confidence": curve.confidence.tolist(),
        "acc": curve.acc.tolist(),
        "count": curve.count.tolist(),
    }


def _reliability_from_json(curve: dict) -> Reliability:
    return Reliability(
        np.asarray(curve["confidence"], dtype=np.float64),
        np.asarray(curve["acc"], dtype=np.float64),
        np.asarray(curve["count"], dtype=np.int64),
    )


@dataclass(frozen=True, eq=False)
class Evaluation:
    """A report with what its figures draw besides it: the images and the probabilities."""

    report: EvaluationReport
    images: ImageSet
    probs: np.ndarray  # at the report's main TTA level


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
) -> CorruptionSweep:
    """Accuracy under every corruption at every severity, on the images or a stratified sample
    of `sample_size`, beside the clean accuracy there.

    `clean_acc`, the caller's accuracy of this ensemble on all of `images` at this `tta`,
    saves an inference pass; it is ignored when a sample is drawn (it is not the sample's)."""
    if sample_size is not None and sample_size < len(images):
        images = images.subset(stratified_sample(images, sample_size, seed))
        clean_acc = None

    def acc(pixels: np.ndarray) -> float:
        probs = ensemble.probs(pixels, tta=tta, **run)
        return float((probs.argmax(axis=1) == images.labels).mean())

    table = {
        name: {s: acc(corrupt(images.images, name, s, seed)) for s in severities} for name in names
    }
    clean = acc(images.images) if clean_acc is None else clean_acc
    return CorruptionSweep(len(images), tta, seed, clean, table)


def _tta_score(
    ensemble: Ensemble, images: ImageSet, level: int, **run
) -> tuple[TTAScore, np.ndarray]:
    """`metrics` and speed at one TTA level, and the probabilities they came from."""
    start = time.perf_counter()
    probs = ensemble.probs(images.images, tta=level, **run)
    seconds = time.perf_counter() - start
    score = TTAScore(
        level=level,
        views=view_count(level),
        seconds=round(seconds, 3),
        images_per_second=round(len(images) / seconds, 1),
        **metrics(probs, images.labels),
    )
    return score, probs


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
    scores = []
    for level in sorted(set(tta_levels)):
        score, probs = _tta_score(ensemble, images, level, **run)
        scores.append(score)
    main = scores[-1]  # and `probs` are this highest level's
    sweep = None
    if corruptions is not None:
        # `main` scored this ensemble on these images at its level, as the sweep's clean pass
        # would (the same `run` too): its accuracy is that pass's, without the pass
        sweep = corruption_report(
            ensemble, images, corruptions or list(CORRUPTIONS), list(severities),
            sample_size=corruption_images, seed=seed, tta=main.level, clean_acc=main.acc, **run,
        )  # fmt: skip
    report = EvaluationReport(
        checkpoints=tuple(str(r.path) for r in ensemble.releases),
        split=split,
        source=images.source,
        images=len(images),
        classes=tuple(ensemble.classes),
        device=str(device),
        precision=precision_name(device, amp),
        tta=tuple(scores),
        main_tta=main.level,
        per_class=tuple(per_class_metrics(probs, images.labels, ensemble.classes)),
        confusion_matrix=confusion_matrix(probs, images.labels),
        reliability=reliability(probs, images.labels),
        corruptions=sweep,
    )
    return Evaluation(report, images, probs)


# --------------------------------------------------------------------------------------------
# Writing it: JSON, Markdown and the figures


def _tta_table(report: EvaluationReport) -> str:
    top5 = any(r.top5 is not None for r in report.tta)  # a column only where there is one
    header = ["TTA", "views", "accuracy %", *(["top-5 %"] if top5 else []), "macro mAP %"]
    rows = [
        [r.level, r.views, percent(r.acc), *([percent(r.top5)] if top5 else []),
         percent(r.macro_map), percent(r.ece), round(r.images_per_second)]
        for r in report.tta
    ]  # fmt: skip
    return markdown_table([*header, f"ECE % ({ECE_BINS} bins)", "images/s"], rows)


def _per_class_table(report: EvaluationReport) -> str:
    per_class = report.per_class
    rows = [
        [c.name, percent(c.precision), percent(c.recall), percent(c.f1),
         percent(c.average_precision), c.support]
        for c in per_class
    ]  # fmt: skip
    macro = [
        np.mean([c.precision for c in per_class]),
        np.mean([c.recall for c in per_class]),
        np.mean([c.f1 for c in per_class]),
    ]
    rows.append(["**macro mean**", *map(percent, macro), percent(report.main.macro_map),
                 sum(c.support for c in per_class)])  # fmt: skip
    return markdown_table(
        ["class", "precision %", "recall (accuracy) %", "F1 %", "AP %", "support"], rows
    )


def _corruption_section(sweep: CorruptionSweep) -> list[str]:
    severities = list(next(iter(sweep.acc.values())))
    means = sweep.mean_by_corruption()
    rows = [
        [name, *(percent(row[s]) for s in severities), percent(means[name])]
        for name, row in sweep.acc.items()
    ]
    return [
        "",
        f"## Robustness to common corruptions (TTA {sweep.tta}, {sweep.images} images)",
        "",
        f"Accuracy % on the clean images: {percent(sweep.clean_acc)}; mean over the "
        f"corruptions below: {percent(sweep.mean_acc)}.",
        "",
        markdown_table(["corruption", *(f"severity {s}" for s in severities), "mean"], rows),
    ]


def markdown_report(report: EvaluationReport, plots: dict[str, Path], relative_to: Path) -> str:
    """The report as Markdown; `plots` (name -> PNG) are linked relative to `relative_to`."""
    several = len(report.checkpoints) > 1
    lines = [
        f"# Evaluation on the {report.split} split",
        "",
        f"- checkpoint{'s (probabilities averaged)' if several else ''}: "
        + ", ".join(f"`{c}`" for c in report.checkpoints),
        f"- data: {report.source} ({report.images} images)",
        f"- run on {report.device}, {report.precision}",
        "",
        "## Accuracy by test-time augmentation level",
        "",
        _tta_table(report),
        "",
        f"## Per class (TTA {report.main_tta})",
        "",
        _per_class_table(report),
    ]
    if report.corruptions is not None:
        lines += _corruption_section(report.corruptions)
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({Path(os.path.relpath(path, relative_to)).as_posix()})"
                  for name, path in plots.items()]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report_markdown(
    path: str | Path, report: EvaluationReport, plots: dict[str, Path]
) -> Path:
    path = Path(path)
    text = markdown_report(report, plots, path.parent)
    with atomic_write(path) as handle:
        handle.write(text)
    return path


def evaluation_figures(evaluation: Evaluation) -> dict[str, Figure]:
    """The report's four figures by name: confusion matrix, the most confident mistakes,
    accuracy per class and the reliability diagram (all at the main TTA level)."""
    report, images = evaluation.report, evaluation.images
    classes = list(report.classes)
    recall = [c.recall for c in report.per_class]
    return {
        "confusion": confusion_figure(report.confusion_matrix, classes),
        "misclassified": misclassified_figure(
            images.images, images.labels, evaluation.probs, classes
        ),
        "per-class-accuracy": per_class_accuracy_figure(classes, recall, report.main.acc),
        "reliability": reliability_figure(report.reliability),
    }


@dataclass(frozen=True)
class ReportFiles:
    json: Path
    markdown: Path
    plots: dict[str, Path]  # figure name -> PNG


def write_report(
    evaluation: Evaluation, report_dir: str | Path, plots_dir: str | Path
) -> ReportFiles:
    """`report_dir/evaluation-<split>.json` and `.md`, and the figures as
    `plots_dir/<split>-<name>.png` (linked from the Markdown)."""
    report = evaluation.report
    plots = {
        name: save_figure(figure, Path(plots_dir) / f"{report.split}-{name}.png")
        for name, figure in evaluation_figures(evaluation).items()
    }
    json_path = Path(report_dir) / f"evaluation-{report.split}.json"
    runs.write_json(json_path, report.to_json())
    markdown = write_report_markdown(
        Path(report_dir) / f"evaluation-{report.split}.md", report, plots
    )
    return ReportFiles(json_path, markdown, plots)
