"""The models a prediction comes from and the labeled images they are scored on.

An `Ensemble` is one or several releases whose probabilities are averaged; inference.py, the
web demo and the evaluation report all label through `Ensemble.probs`, hence through
`budgetnet.evaluation.infer.infer`. `labeled_split` gives the images to score: the data's test
split, or the very validation split a run held out, rebuilt from its model.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from budgetnet.data.sources import ImageSet, hold_out, load_split
from budgetnet.errors import UserError, brief
from budgetnet.evaluation.infer import check_finite_probs, infer
from budgetnet.models.checkpoint import Release, load_release, release_parameters

# What a run's held-out validation split is rebuilt from: the `DataProvenance` of its splits,
# which training stores as provenance["data"] in model.json.
VAL_SPLIT_KEYS = ("val_size", "seed", "max_per_class")


@dataclass
class Ensemble:
    """Releases that label the same classes; their probabilities are averaged."""

    releases: list[Release]

    @property
    def classes(self) -> list[str]:
        return self.releases[0].classes

    def describe(self) -> str:
        return " + ".join(str(r.path) for r in self.releases)

    @property
    def parameters(self) -> int:
        """Every member's parameters: averaging two models makes one model of both sizes."""
        return sum(p.numel() for r in self.releases for p in r.model.parameters())

    def probs(
        self,
        images: np.ndarray,
        *,
        tta: int,
        batch_size: int,
        device: torch.device,
        amp: bool = True,
    ) -> np.ndarray:
        """(N, num_classes) float32: the mean of every model's TTA-averaged probabilities,
        each member's checked to be finite (`check_finite_probs`) before they are averaged."""
        total = sum(
            check_finite_probs(
                infer(
                    r.model,
                    images,
                    r.preprocessing,
                    tta=tta,
                    batch_size=batch_size,
                    device=device,
                    amp=amp,
                ),
                str(r.path),
            )
            for r in self.releases
        )
        return (total / len(self.releases)).numpy()


def load_ensemble(paths: list[str | Path], device: torch.device, max_params: int = 0) -> Ensemble:
    """The releases at `paths`, checked to label the same classes and, unless `max_params` is
    0, to hold at most `max_params` parameters together: counted from every member's spec
    (model.json) before any network is built or any weight read."""
    if max_params:
        planned = [release_parameters(path) for path in paths]
        total = sum(params for _, params in planned)
        if total > max_params:
            members = f"{len(paths)} models hold" if len(paths) > 1 else "the model holds"
            raise UserError(
                f"{' + '.join(str(folder) for folder, _ in planned)}: {members} {total:,} "
                f"parameters, over the budget of {max_params:,} (--max-params; 0 turns the "
                "check off for local experiments)"
            )
    releases = []
    for path in paths:  # each member's own share, in case its model.json changed since
        left = max_params - Ensemble(releases).parameters if max_params else None
        releases.append(load_release(path, device, max_params=left))
    first = releases[0]
    for other in releases[1:]:
        if other.classes != first.classes:
            raise UserError(
                f"{other.path}: classes {other.classes} differ from {first.path}'s "
                f"{first.classes}; models averaged together must label the same classes in the "
                "same order"
            )
    return Ensemble(releases)


def _data_provenance(release: Release) -> dict:
    notes = (release.meta.get("provenance") or {}).get("data")
    return notes if isinstance(notes, dict) else {}


def _saw_test(notes: dict) -> bool:
    return "test" in str(notes.get("train_splits", "train")).split("+")


def _is_count(value: object, least: int) -> bool:
    # bool is an int to Python, but True is no seed or count training would have recorded
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check_val_provenance(release: Release, given: dict) -> None:
    """Refuse a model.json whose validation settings are missing or damaged (they would
    otherwise crash, or silently draw another split, deep in the data code)."""
    missing = [k for k in VAL_SPLIT_KEYS if k not in given]
    if missing:
        raise UserError(
            f"{release.path}: model.json does not record how its validation "
            f"split was drawn ({', '.join(missing)} missing); evaluate with --split test"
        )
    valid = {
        "val_size": _is_count(given["val_size"], 0),
        "seed": _is_count(given["seed"], 0),
        "max_per_class": given["max_per_class"] is None or _is_count(given["max_per_class"], 1),
    }
    for key in VAL_SPLIT_KEYS:
        if not valid[key]:
            raise UserError(
                f"{release.path}: model.json records an invalid {key} "
                f"({brief(given[key])}); evaluate with --split test"
            )


def _held_out_split(ensemble: Ensemble, source: str | None, notes: list[dict]) -> ImageSet:
    """The validation split every release held out, rebuilt; refused unless all recorded the
    same draw (averaged models scored on a split one of them trained on would flatter it)."""
    for release, given in zip(ensemble.releases, notes, strict=True):
        _check_val_provenance(release, given)
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
    # load_splits' own steps, less the test split and the statistics that are not needed here
    full = load_split(source, "train", max_per_class=settings[0]["max_per_class"])
    val = hold_out(full, settings[0]["val_size"], settings[0]["seed"])[2]
    if val is None:
        raise UserError(
            f"{ensemble.releases[0].path}: its run held out no validation split "
            "(val_size 0); evaluate with --split test"
        )
    return val


def labeled_split(ensemble: Ensemble, split: str, data: str | None = None) -> ImageSet:
    """The test split of the training data (or of `data`), or the very validation split the
    run held out, rebuilt from the settings stored in model.json."""
    notes = [_data_provenance(r) for r in ensemble.releases]
    recorded = notes[0].get("source")
    if not data and recorded is not None and not isinstance(recorded, str):
        raise UserError(
            f"{ensemble.releases[0].path}: model.json records an invalid source "
            f"({brief(recorded)}); name the data with --data"
        )
    source = data or recorded
    if split == "test":
        trained_on = [r.path for r, n in zip(ensemble.releases, notes, strict=True) if _saw_test(n)]
        if trained_on and data is None:
            raise UserError(
                f"{trained_on[0]}: its run trained on the test split, so a test accuracy would "
                "mean nothing; evaluate with --split val (or another source's test with --data)"
            )
        images = load_split(source, "test")
    elif split == "val":
        images = _held_out_split(ensemble, source, notes)
    else:
        raise UserError(f"unknown split {split!r}; choose test or val")
    if images.classes != ensemble.classes:
        raise UserError(
            f"{images.source}: classes {images.classes} differ from the model's {ensemble.classes}"
        )
    return images
