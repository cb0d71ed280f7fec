"""An Optuna study that trains: budgeted ResNets and their recipe sampled together, bad trials
pruned early, any number of workers on one shared storage.

    python code/search.py --trials 20 --study s1 --epochs 5 --data ../shared/data/cifar10
    python code/search.py --trials 20 --study s1 --storage postgresql://user@host/db  # each machine

A worker asks the storage for a trial, samples a network and a recipe from the space
(`SearchSpace`), refuses a network over the parameter budget from its closed-form count before
anything is built, trains it through the one engine (a short fixed schedule or a time budget),
reports validation accuracy after each epoch so that the pruner can stop it, and tells the
storage its best validation accuracy. The test split is never read. Workers that share a study
and a storage share the work: Optuna's storage numbers the trials, so none is run twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from budgetnet.errors import UserError, brief, reject_unknown, shorten
from budgetnet.files import atomic_write
from budgetnet.models.complexity import count_params
from budgetnet.models.spec import BLOCK_TYPES, STEMS, ResNetSpec
from budgetnet.training.config import SETTINGS, TrainConfig, merge, read_config_file

STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SPACE_ATTR = "budgetnet_space"  # the study's user attribute holding the space it was made for
# Settings of a run rather than of a recipe: a space may not sample them.
NOT_RECIPE = {
    "data", "max_per_class", "val_size", "train_splits", "epochs", "time_budget", "seed",
    "run_dir", "device", "workers", "threads", "resume",
}  # fmt: skip
MAX_INFEASIBLE = 1000  # samples over budget in a row before the space is called infeasible


# --------------------------------------------------------------------------------------------
# The space


@dataclasses.dataclass(frozen=True)
class Interval:
    """Numbers from `low` to `high`, both included; integers when both ends are integers
    (`step` apart), sampled on a log scale when `log`."""

    low: float
    high: float
    log: bool = False
    step: int = 1

    @property
    def integer(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))

    def suggest(self, trial, name: str) -> float:
        if self.integer:
            step = 1 if self.log else self.step
            return trial.suggest_int(name, self.low, self.high, step=step, log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def ends(self) -> tuple:
        return (self.low, self.high)


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of `values` (a single value: fixed)."""

    values: tuple

    def suggest(self, trial, name: str) -> Any:
        if len(self.values) == 1:
            return self.values[0]  # fixed: not a parameter of the study
        return trial.suggest_categorical(name, list(self.values))

    def ends(self) -> tuple:
        return self.values


def parse_dimension(value: Any, where: str) -> Interval | Choice:
    """A space file's entry: a list of choices, {low, high[, log][, step]}, or one value."""
    if isinstance(value, dict):
        reject_unknown(value, ("low", "high", "log", "step"), "range key", where)
        low, high = value.get("low"), value.get("high")
        log, step = value.get("log", False), value.get("step", 1)
        numbers = all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in (low, high)
        )
        if not numbers or type(log) is not bool or type(step) is not int or step < 1:
            raise UserError(
                f"{where}: a range needs finite numbers low and high, log true/false and an "
                f"integer step >= 1, got {brief(value)}"
            )
        if low > high or (log and low <= 0):
            raise UserError(
                f"{where}: empty range {low} .. {high}" + (" (log needs low > 0)" if log else "")
            )
        return Interval(low, high, log, step)
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str | int | float | bool) for v in values):
        raise UserError(
            f"{where}: choices must be a non-empty list of numbers or words, got {brief(value)}"
        )
    if len(set(map(repr, values))) != len(values):
        raise UserError(f"{where}: choices repeat a value: {brief(value)}")
    return Choice(tuple(values))


# The network part: how a sample becomes a ResNetSpec. Each stage i has units_i residual units
# and width * growth**i channels, rounded to a multiple of 8 (what vector units like).
MODEL_DIMENSIONS = {
    "stages": "number of stages (each after the first halves the map)",
    "units": "residual units of each stage, sampled per stage",
    "width": "channels of the first stage",
    "growth": "channel multiplier from one stage to the next",
    "block": f"unit type: {', '.join(BLOCK_TYPES)}",
    "stem": f"stem: {', '.join(STEMS)}",
    "kernel": "convolution kernel size (odd)",
}
DEFAULT_MODEL = {
    "stages": Choice((3,)),
    "units": Interval(1, 4),
    "width": Interval(16, 96, step=8),
    "growth": Choice((2,)),
    "block": Choice(("basic", "preact")),
    "stem": Choice(("cifar",)),
    "kernel": Choice((3,)),
}
# The recipe part: TrainConfig fields by their own names and units.
DEFAULT_RECIPE = {
    "lr": Interval(0.02, 0.4, log=True),  # peak lr per lr_base_size (128) images
    "weight_decay": Interval(1e-4, 2e-3, log=True),
    "smoothing": Interval(0.0, 0.2),  # label smoothing
    "reprob": Interval(0.0, 0.5),  # RandomErasing probability per image
    "mixup": Interval(0.0, 0.4),  # Mixup alpha (0 = off)
}


@dataclasses.dataclass(frozen=True)
class Sample:
    """One trial's network and recipe, or why its network was not trained."""

    spec: ResNetSpec | None
    recipe: dict[str, Any]
    infeasible: str | None = None
    # parameters over the budget (<= 0: within it), the constraint TPE learns to keep
    excess: float = 0.0


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    model: dict[str, Interval | Choice]
    recipe: dict[str, Interval | Choice]

    @classmethod
    def load(cls, path: str | Path | None, base: TrainConfig) -> SearchSpace:
        """The default space with a file's `model:` and `recipe:` entries over it, each
        recipe entry's ends checked as settings of `base`."""
        content = read_config_file(path) if path else {}
        where = str(path)
        reject_unknown(content, ("model", "recipe"), "space section", where)
        parts = {}
        for part, defaults, known in [
            ("model", DEFAULT_MODEL, MODEL_DIMENSIONS),
            ("recipe", DEFAULT_RECIPE, list(SETTINGS)),
        ]:  # fmt: skip
            given = content.get(part) or {}
            if not isinstance(given, dict):
                raise UserError(f"{where}: {part} must be a mapping, got {brief(given)}")
            reject_unknown(given, known, f"{part} dimension", where)
            fixed = sorted(NOT_RECIPE & set(given)) if part == "recipe" else []
            if fixed:
                raise UserError(f"{where}: {', '.join(fixed)} belong to the run, not the space")
            parts[part] = {
                **defaults,
                **{k: parse_dimension(v, f"{where}: {part}.{k}") for k, v in given.items()},
            }
        space = cls(parts["model"], parts["recipe"])
        for key, dimension in space.recipe.items():
            for value in dimension.ends():
                merge(base, {key: value}, f"{where}: recipe.{key}")  # a bad end: one line here
        return space

    def to_dict(self) -> dict:
        return {
            part: {
                key: dataclasses.asdict(d) | {"kind": type(d).__name__} for key, d in dims.items()
            }
            for part, dims in (("model", self.model), ("recipe", self.recipe))
        }

    def fingerprint(self, settings: dict) -> str:
        """What a study is for: the space and the run settings that make trials comparable."""
        text = json.dumps({"space": self.to_dict(), **settings}, sort_keys=True, default=str)
        return text + "\n#" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def sample(self, trial, max_params: int) -> Sample:
        m, suggest = self.model, lambda d, name: d.suggest(trial, name)
        stages = suggest(m["stages"], "stages")
        units = tuple(suggest(m["units"], f"units_{i}") for i in range(stages))
        width, growth = suggest(m["width"], "width"), suggest(m["growth"], "growth")
        channels = tuple(max(8, 8 * round(width * growth**i / 8)) for i in range(stages))
        recipe = {key: suggest(d, key) for key, d in self.recipe.items()}
        try:
            spec = ResNetSpec(
                units, channels, kernel=suggest(m["kernel"], "kernel"),
                block=suggest(m["block"], "block"), stem=suggest(m["stem"], "stem"),
            )  # fmt: skip
        except UserError as exc:
            return Sample(None, recipe, f"not a network: {exc}", excess=float(max_params))
        params = count_params(spec)
        if params > max_params:
            why = f"{params:,} parameters > the budget of {max_params:,}"
            return Sample(spec, recipe, why, excess=float(params - max_params))
        return Sample(spec, recipe, excess=float(params - max_params))


# --------------------------------------------------------------------------------------------
# Storage and study


def default_storage(name: str) -> str:
    return f"sqlite:///runs/search/{name}.db"


def _first_line(exc: Exception) -> str:
    return shorten(" ".join(str(exc).split("\n")[0].split()), 160)


def open_study(name: str, url: str, fingerprint: str, seed: int | None, pruner):
    """The study `name` in storage `url` (made if new), refused if made for another space."""
    import optuna
    import sqlalchemy.exc

    if not STUDY_NAME.fullmatch(name):
        raise UserError(
            f"--study must be 1-64 letters, digits, _ . - (from a letter or digit), got {brief(name)}"
        )
    shown = _hide_password(url)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}  # workers wait for each other's writes
    else:
        engine = {"pool_pre_ping": True, "connect_args": _connect_timeout(url)}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(5):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
            study = optuna.create_study(
                storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner,
            )  # fmt: skip
            made_for = study.user_attrs.get(SPACE_ATTR)
            if made_for is None:
                study.set_user_attr(SPACE_ATTR, fingerprint)
            break
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as exc:
            # Workers started together on a new database race to create Optuna's tables
            # (PostgreSQL: a duplicate key; SQLite: "table ... already exists"); the loser
            # finds them made on its next try. Any other operational error is the storage's.
            racing = isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in str(exc)
            if not racing:
                raise UserError(f"cannot open study storage {shown}: {_first_line(exc)}") from None
            if attempt == 4:
                raise UserError(f"cannot create the study tables in {shown}") from None
            time.sleep(0.5 + attempt)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as exc:
            raise UserError(f"cannot open study storage {shown}: {_first_line(exc)}") from None
    if made_for is not None and made_for != fingerprint:
        raise UserError(
            f"study {name!r} in {shown} was made for another space or schedule "
            f"({_difference(made_for, fingerprint)}); give a new --study name"
        )
    return study


def _hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return shorten(make_url(url).render_as_string(hide_password=True), 120)
    except Exception:  # an unparseable URL: show only its scheme
        return shorten(url.split(":", 1)[0] + ":...", 40)


def _connect_timeout(url: str) -> dict:
    return {"connect_timeout": 10} if url.startswith(("postgresql", "postgres")) else {}


def _difference(old: str, new: str) -> str:
    """Where two fingerprints differ: dimension names (model.width) and run settings."""

    def flat(value: Any, prefix: str = "", depth: int = 0) -> dict[str, Any]:
        if not isinstance(value, dict) or depth == 3:
            return {prefix: json.dumps(value, sort_keys=True)}
        return {
            k: v
            for key, item in value.items()
            for k, v in flat(item, f"{prefix}{key}.", depth + 1).items()
        }

    a, b = (flat(json.loads(text.rsplit("\n#", 1)[0])) for text in (old, new))
    keys = sorted(
        k.rstrip(".").removeprefix("space.") for k in a.keys() | b.keys() if a.get(k) != b.get(k)
    )
    return "differs in " + shorten(", ".join(keys), 100)


def make_pruner(name: str, startup: int, epochs: int):
    """median: stop a trial whose accuracy after an epoch is below the median of earlier trials
    at that epoch (once `startup` trials have finished); hyperband: successive halving over
    brackets of epochs (Li et al. 2018); none: train every trial to the end."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


# --------------------------------------------------------------------------------------------
# Trials


def train_trial(trial, sample: Sample, base: TrainConfig, splits, out: Path) -> float:
    """Train one sample through the engine, reporting validation accuracy each epoch; its best
    validation accuracy. Raises optuna.TrialPruned when the pruner stops it."""
    import optuna

    from budgetnet.training.engine import fit

    run_dir = out / "trials" / f"trial-{trial.number:04d}"
    config = merge(base, {**sample.recipe, "run_dir": str(run_dir)}, f"trial {trial.number}")

    def report(row: dict) -> None:
        trial.report(row["val_acc"], row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"after epoch {row['epoch'] + 1}: val {row['val_acc']:.4f}")

    return fit(config, sample.spec, splits=splits, log=lambda line: None, on_epoch=report)[
        "val_acc"
    ]


@dataclasses.dataclass
class WorkerLog:
    """This worker's progress: one line per finished, pruned or refused trial."""

    trials: int
    started: float
    clock: Callable[[], float] = time.perf_counter
    done: int = 0

    def line(self, study, number: int, what: str) -> str:
        self.done += 1
        elapsed = self.clock() - self.started
        eta = elapsed / self.done * (self.trials - self.done)
        try:
            best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:  # no trial has completed yet
            best = "best none yet"
        return (
            f"trial {number} {what} | {best} | {self.done}/{self.trials} in "
            f"{_clock(elapsed)}, ETA {_clock(eta)}"
        )


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{seconds:02d}s"


def run_worker(study, space: SearchSpace, base: TrainConfig, splits, trials: int, max_params: int,
               out: Path, log: Callable[[str], None] = print) -> None:  # fmt: skip
    """Run `trials` trials of `study` (infeasible samples are told to the study, so the
    sampler learns to avoid them, but do not count); results rewritten after each."""
    import optuna
    from optuna.trial import TrialState

    progress, refused = WorkerLog(trials, time.perf_counter()), 0
    while progress.done < trials:
        trial = study.ask()
        sample = space.sample(trial, max_params)
        # Told as a constraint, not only as pruned: TPE then ranks an infeasible sample below
        # every feasible one (a pruned trial without values would count among its "good" ones
        # and draw the sampler towards the infeasible region).
        trial.set_constraint("parameters_over_budget", sample.excess)
        if sample.infeasible:
            trial.set_user_attr("infeasible", sample.infeasible)
            study.tell(trial, state=TrialState.PRUNED)
            refused += 1
            if refused >= MAX_INFEASIBLE:
                raise UserError(
                    f"{refused} samples in a row were infeasible ({sample.infeasible}); widen the space or the budget"
                )
            continue
        refused = 0
        trial.set_user_attr("spec", sample.spec.to_dict())
        trial.set_user_attr("recipe", sample.recipe)  # fixed dimensions too, not only params
        trial.set_user_attr("params", count_params(sample.spec))
        try:
            value = train_trial(trial, sample, base, splits, out)
        except optuna.TrialPruned as pruned:
            study.tell(trial, state=TrialState.PRUNED)
            what = f"pruned {pruned}"
        except UserError as exc:  # a diverged run: the recipe failed, not the study
            trial.set_user_attr("error", shorten(str(exc), 200))
            study.tell(trial, state=TrialState.FAIL)
            what = f"failed: {shorten(str(exc), 100)}"
        except BaseException:  # interrupted: the storage must not keep it running forever
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
            what = f"complete: val {value:.4f}"
        log(progress.line(study, trial.number, what))
        write_results(study, base, out, figures=False)  # an interruption keeps these


# --------------------------------------------------------------------------------------------
# Results


def write_results(study, base: TrainConfig, out: Path, figures: bool = True) -> list[Path]:
    """trials.csv (every trial), best.yaml (the best trial as a recipe train.py --config
    accepts) and Optuna's figures; each written whole, so readers never see half a file."""
    out.mkdir(parents=True, exist_ok=True)
    frame = study.trials_dataframe(
        attrs=("number", "value", "state", "params", "user_attrs", "duration")
    )
    written = [out / "trials.csv"]
    with atomic_write(written[0]) as handle:
        frame.to_csv(handle, index=False)
    try:
        best = study.best_trial
    except ValueError:
        return written
    written.append(out / "best.yaml")
    with atomic_write(written[1]) as handle:
        handle.write(f"# study {study.study_name}, trial {best.number}: val acc {best.value:.4f}\n")
        yaml.safe_dump(best_recipe(best, base), handle, sort_keys=False)
    return written + (write_figures(study, out) if figures else [])


def best_recipe(trial, base: TrainConfig) -> dict:
    """The trial's network and recipe over the study's own settings: train.py --config input."""
    default = TrainConfig().flat()
    settings = {
        name: value for name, value in base.flat().items()
        if name not in NOT_RECIPE and value != default[name]
    }  # fmt: skip
    return {
        "model": trial.user_attrs["spec"],
        "epochs": base.schedule.epochs,
        **settings,
        **trial.user_attrs["recipe"],
    }


def write_figures(study, out: Path) -> list[Path]:
    """Optuna's optimisation history and (with two finished trials or more) parameter
    importances, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    from budgetnet.evaluation.figures import save_figure

    written = []
    for name, plot in [
        ("history", plots.plot_optimization_history),
        ("importances", plots.plot_param_importances),
    ]:
        try:
            axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few trials for this figure
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        written.append(save_figure(figure, out / f"{name}.png"))
        plt.close(figure)
    return written
