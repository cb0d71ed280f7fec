"""Scoring trained models on a labeled split: metrics, calibration, robustness, and the report.

Every number starts from the class probabilities of `budgetnet.evaluation.infer.infer`, the function
inference.py labels the Kaggle pickle with, so what is measured here is what a submission
made with the same checkpoints and TTA level would do.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from budgetnet.data.sources import ImageSet, load_split, load_splits, split_train_val
from budgetnet.errors import UserError, positive_int
from budgetnet.evaluation.corruptions import CORRUPTIONS, corrupt
from budgetnet.evaluation.infer import infer, tta_views
from budgetnet.files import atomic_write
from budgetnet.models.checkpoint import Release, load_release
from budgetnet.models.complexity import markdown_table
from budgetnet.runtime import precision_name, resolve_device

ECE_BINS = 15  # Guo et al. (2017)
# Images per forward pass: on 2 CPU cores, batches of 64-128 label about 1.45x faster than
# batches of 500 (benchmarks/inference_speed.py); a GPU may prefer larger ones (--batch-size).
BATCH_SIZE = 128
# What a run's held-out validation split is rebuilt from: the notes of `load_splits` that
# training stores as provenance["data"] in model.json.
VAL_SPLIT_KEYS = ("val_size", "seed", "max_per_class")


# --------------------------------------------------------------------------------------------
# Models: one or several releases, probabilities averaged


def add_model_arguments(parser: argparse.ArgumentParser, default_checkpoint: str) -> None:
    """The flags inference.py and evaluate.py share: which models, where and how they run."""
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        default=[default_checkpoint],
        metavar="PATH",
        help="run directories (their best model) or release folders/files; "
        f"several are averaged (default {default_checkpoint})",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=BATCH_SIZE,
        help=f"images per forward pass (default {BATCH_SIZE})",
    )
    parser.add_argument(
        "--fp32",
        action="store_true",
        help="run in float32 even where the device computes bf16 natively (for comparison)",
    )


def device_from_arg(name: str) -> torch.device:
    try:
        device = resolve_device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA device (use cpu or auto)")
    return device


@dataclass
class Ensemble:
    """Releases that label the same classes; their probabilities are averaged."""

    releases: list[Release]

    @property
    def classes(self) -> list[str]:
        return self.releases[0].classes

    def describe(self) -> str:
        return " + ".join(str(r.path) for r in self.releases)

    def probs(
        self,
        images: np.ndarray,
        *,
        tta: int,
        batch_size: int,
        device: torch.device,
        amp: bool = True,
    ) -> np.ndarray:
        """(N, num_classes) float32: the mean of every model's TTA-averaged probabilities."""
        total = sum(
            infer(
                r.model,
                images,
                r.normalization,
                tta=tta,
                batch_size=batch_size,
                device=device,
                amp=amp,
            )
            for r in self.releases
        )
        return (total / len(self.releases)).numpy()


def load_ensemble(paths: list[str | Path], device: torch.device) -> Ensemble:
    releases = [load_release(path, device) for path in paths]
    first = releases[0]
    for other in releases[1:]:
        if other.classes != first.classes:
            raise UserError(
                f"{other.path}: classes {other.classes} differ from {first.path}'s "
                f"{first.classes}; models averaged together must label the same classes in the "
                "same order"
            )
    return Ensemble(releases)


# --------------------------------------------------------------------------------------------
# The labeled split a model is scored on


def _data_notes(release: Release) -> dict:
    notes = (release.meta.get("provenance") or {}).get("data")
    return notes if isinstance(notes, dict) else {}


def labeled_split(ensemble: Ensemble, split: str, data: str | None = None) -> ImageSet:
    """The test split of the training data (or of `data`), or the very validation split the
    run held out, rebuilt from the settings stored in model.json."""
    notes = [_data_notes(r) for r in ensemble.releases]
    source = data or notes[0].get("source")
    if split == "test":
        images = load_split(source, "test")
    elif split == "val":
        for release, given in zip(ensemble.releases, notes, strict=True):
            missing = [k for k in VAL_SPLIT_KEYS if k not in given]
            if missing:
                raise UserError(
                    f"{release.path}: model.json does not record how its validation "
                    f"split was drawn ({', '.join(missing)} missing); evaluate with "
                    "--split test"
                )
        if source is None:
            raise UserError(
                f"{ensemble.releases[0].path}: model.json does not say which data "
                "it was trained on; name it with --data"
            )
        settings = [{k: given[k] for k in VAL_SPLIT_KEYS} for given in notes]
        if any(s != settings[0] for s in settings):
            raise UserError(
                "these checkpoints held out different validation splits "
                f"({settings}); evaluate them with --split test"
            )
        splits = load_splits(source, **settings[0])
        if splits.val is None:
            raise UserError(
                f"{ensemble.releases[0].path}: its run held out no validation split "
                "(val_size 0); evaluate with --split test"
            )
        images = splits.val
    else:
        raise UserError(f"unknown split {split!r}; choose test or val")
    if images.classes != ensemble.classes:
        raise UserError(
            f"{images.source}: classes {images.classes} differ from the model's {ensemble.classes}"
        )
    return images


# --------------------------------------------------------------------------------------------
# Metrics


@dataclass
class Reliability:
    """Predictions binned by confidence (top probability) into equal-width bins (lo, hi]."""

    confidence: np.ndarray  # mean confidence per bin (0 where empty)
    accuracy: np.ndarray  # accuracy per bin (0 where empty)
    count: np.ndarray  # predictions per bin

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean |accuracy - confidence|."""
        return float(
            (self.count * np.abs(self.accuracy - self.confidence)).sum() / self.count.sum()
        )


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    seen = np.maximum(count, 1)
    return Reliability(
        np.bincount(index, confidence, bins) / seen, np.bincount(index, correct, bins) / seen, count
    )


def average_precisions(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One-vs-rest average precision per class; NaN for a class with no image in `labels`."""
    # scikit-learn is imported where it is used: it takes a second, and inference.py (which
    # imports this module for the ensemble) never needs it.
    from sklearn.metrics import average_precision_score

    positives = np.eye(probs.shape[1], dtype=bool)[labels]
    present = positives.any(axis=0)
    out = np.full(probs.shape[1], np.nan)
    if present.any():
        out[present] = average_precision_score(
            positives[:, present], probs[:, present], average=None
        )
    return out


def confusion_matrix(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """counts[true, predicted]."""
    classes = probs.shape[1]
    pairs = labels * classes + probs.argmax(axis=1)
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


def summary_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, macro mean average precision (over the classes present) and ECE."""
    return {
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
        "macro_map": float(np.nanmean(average_precisions(probs, labels))),
        "ece": reliability(probs, labels).ece,
    }


def per_class_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> list[dict]:
    """Precision, recall (= the class's accuracy), F1, average precision and support."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, probs.argmax(axis=1), labels=np.arange(len(classes)), zero_division=0
    )
    ap = average_precisions(probs, labels)
    return [
        {
            "class": name,
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "average_precision": None if np.isnan(a) else float(a),
            "support": int(s),
        }
        for name, p, r, f, a, s in zip(classes, precision, recall, f1, ap, support, strict=True)
    ]


# --------------------------------------------------------------------------------------------
# The evaluation


def view_count(tta: int) -> int:
    """How many views of each image a TTA level averages (asked of `tta_views` itself)."""
    return len(tta_views(torch.zeros(1, 3, 4, 4), tta))


@dataclass
class Evaluation:
    report: dict  # everything the JSON and Markdown reports hold
    images: ImageSet
    probs: np.ndarray  # at the report's main TTA level

    @property
    def reliability(self) -> Reliability:
        return reliability(self.probs, self.images.labels)


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
    **run,
) -> dict:
    """Accuracy under every corruption at every severity ({name: {severity: accuracy}}), on
    the images or a stratified sample of `sample_size`, beside the clean accuracy there."""
    if sample_size is not None and sample_size < len(images):
        images = images.subset(stratified_sample(images, sample_size, seed))

    def accuracy(pixels: np.ndarray) -> float:
        probs = ensemble.probs(pixels, tta=tta, **run)
        return float((probs.argmax(axis=1) == images.labels).mean())

    table = {
        name: {str(s): accuracy(corrupt(images.images, name, s, seed)) for s in severities}
        for name in names
    }
    return {
        "images": len(images),
        "tta": tta,
        "seed": seed,
        "clean_accuracy": accuracy(images.images),
        "accuracy": table,
        "mean_accuracy": float(np.mean([a for row in table.values() for a in row.values()])),
    }


def evaluate(
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
        start = time.perf_counter()
        probs = ensemble.probs(images.images, tta=level, **run)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "level": level,
                "views": view_count(level),
                **summary_metrics(probs, images.labels),
                "seconds": round(seconds, 3),
                "images_per_second": round(len(images) / seconds, 1),
            }
        )
    main = rows[-1]["level"]  # and `probs` are this highest level's
    curve = reliability(probs, images.labels)
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
        "reliability": {
            "bins": len(curve.count),
            "confidence": curve.confidence.tolist(),
            "accuracy": curve.accuracy.tolist(),
            "count": curve.count.tolist(),
        },
    }
    if corruptions is not None:
        report["corruptions"] = corruption_report(
            ensemble, images, corruptions or list(CORRUPTIONS), list(severities),
            sample_size=corruption_images, seed=seed, tta=main, **run,
        )  # fmt: skip
    return Evaluation(report, images, probs)


# --------------------------------------------------------------------------------------------
# Reports


def write_json(path: str | Path, report: dict) -> Path:
    with atomic_write(path) as handle:
        json.dump(report, handle, indent=2)
    return Path(path)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def markdown_report(report: dict, plots: dict[str, Path], relative_to: Path) -> str:
    """The report as Markdown; `plots` (name -> PNG) are linked relative to `relative_to`."""
    main = next(r for r in report["tta"] if r["level"] == report["main_tta"])
    several = len(report["checkpoints"]) > 1
    tta_rows = [
        [r["level"], r["views"], _pct(r["accuracy"]), _pct(r["macro_map"]), _pct(r["ece"]),
         round(r["images_per_second"])]
        for r in report["tta"]
    ]  # fmt: skip
    per_class = report["per_class"]
    class_rows = [
        [c["class"], _pct(c["precision"]), _pct(c["recall"]), _pct(c["f1"]),
         _pct(c["average_precision"]), c["support"]]
        for c in per_class
    ]  # fmt: skip
    macro = [np.mean([c[key] for c in per_class]) for key in ("precision", "recall", "f1")]
    class_rows.append(["**macro mean**", *map(_pct, macro), _pct(main["macro_map"]),
                       sum(c["support"] for c in per_class)])  # fmt: skip
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
        markdown_table(
            ["TTA", "views", "accuracy %", "macro mAP %", f"ECE % ({ECE_BINS} bins)", "images/s"],
            tta_rows,
        ),
        "",
        f"## Per class (TTA {main['level']})",
        "",
        markdown_table(
            ["class", "precision %", "recall (accuracy) %", "F1 %", "AP %", "support"], class_rows
        ),
    ]
    if "corruptions" in report:
        sweep = report["corruptions"]
        severities = list(next(iter(sweep["accuracy"].values())))
        rows = [[name, *(_pct(row[s]) for s in severities), _pct(np.mean(list(row.values())))]
                for name, row in sweep["accuracy"].items()]  # fmt: skip
        lines += [
            "",
            f"## Robustness to common corruptions (TTA {sweep['tta']}, {sweep['images']} images)",
            "",
            f"Accuracy % on the clean images: {_pct(sweep['clean_accuracy'])}; mean over the "
            f"corruptions below: {_pct(sweep['mean_accuracy'])}.",
            "",
            markdown_table(["corruption", *(f"severity {s}" for s in severities), "mean"], rows),
        ]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({Path(os.path.relpath(path, relative_to)).as_posix()})"
                  for name, path in plots.items()]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_markdown(path: str | Path, report: dict, plots: dict[str, Path]) -> Path:
    path = Path(path)
    text = markdown_report(report, plots, path.parent)
    with atomic_write(path) as handle:
        handle.write(text)
    return path
