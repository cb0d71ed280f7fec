"""Rank every ResNet of a grid that fits a parameter budget (analytic counts, no training).

    python code/search.py --max-params 5e6
    python code/search.py --max-params 5e6 --grid my_grid.yaml --kernels 3 --top 30

Grid flags override the grid file's keys (stages, blocks, widths, kernels, pools, block,
shortcut, num_classes, input_size); writes candidates.csv (all that fit) and candidates.md.

With `--train-top K --epochs E`, the first K candidates are then trained for E epochs each
with code/train.py's recipe (`--train-config FILE.yaml` changes it) and re-ranked by
validation accuracy on the held-out split (trained.csv / trained.md):

    python code/search.py --max-params 5e6 --train-top 5 --epochs 10 --data ../shared/data/cifar10

With `--trials N --study NAME`, an Optuna study samples networks under the budget and their
recipe together, trains each for --epochs (or --time-budget minutes), prunes bad ones after
any epoch, and resumes or shares the work through its storage (budgetnet.training.study):

    python code/search.py --trials 20 --study s1 --epochs 5 --data ../shared/data/cifar10
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

from budgetnet.data.sources import load_splits
from budgetnet.errors import ArgumentParser, UserError, add_old_spelling, run_cli
from budgetnet.files import check_output_dir
from budgetnet.models.search import (
    COLUMNS,
    Grid,
    format_markdown,
    load_grid,
    rank_by_training,
    row,
    search,
    write_csv,
    write_markdown,
    write_rows,
)
from budgetnet.models.spec import BLOCK_TYPES, SHORTCUTS, STEMS
from budgetnet.tables import markdown_table
from budgetnet.training import config as train_config


def training_config(args) -> train_config.TrainConfig:
    """The settings of the ranking runs (--train-config, then the flags), checked before the
    search writes anything."""
    overrides = train_config.read_config_file(args.train_config) if args.train_config else {}
    overrides.pop("model", None)  # the model is the candidate
    config = train_config.merge(train_config.TrainConfig(), overrides, "--train-config")
    flags = {
        "epochs": args.epochs,
        "data": args.data,
        "max_per_class": args.max_per_class,
        "device": args.device,
    }
    config = train_config.merge(config, flags, "flags")  # the epochs checked before they are used
    config = train_config.merge(
        config, {"warmup_epochs": min(config.schedule.warmup_epochs, args.epochs / 4)}, "flags"
    )
    if config.dataset.val_size == 0:
        raise UserError("ranking by training needs a validation split (val_size > 0)")
    return config


def train_ranking(
    candidates, args, out: Path, config: train_config.TrainConfig | None = None
) -> str:
    """Short training runs of the top candidates on one data load; a Markdown table.
    `config`: `training_config(args)`, which main checks before the search writes anything."""
    from budgetnet.training.engine import fit, model_name

    config = config or training_config(args)

    splits = load_splits(
        config.dataset.data,
        val_size=config.dataset.val_size,
        max_per_class=config.dataset.max_per_class,
        seed=config.runtime.seed,
    )

    def validation_accuracy(spec) -> float:
        run = config.with_values(run_dir=str(out / "train" / model_name(spec)))
        return fit(run, spec, splits=splits)["val_acc"]

    ranked = rank_by_training(candidates, validation_accuracy, args.train_top)
    # candidates.csv's columns with validation accuracy in place of the Pareto flag
    rows = [(*row(i, c)[:-1], f"{accuracy:.4f}") for i, (c, accuracy) in enumerate(ranked, 1)]
    header = (*COLUMNS[:-1], "val_acc")
    write_rows(out / "trained.csv", header, rows)
    return (
        f"Top {args.train_top} by validation accuracy after {args.epochs} epochs "
        f"({len(splits.val)} held-out images, seed {config.runtime.seed}):\n\n"
        + markdown_table(header, rows)
    )


def run_study(args, max_params: int) -> int:
    """This worker's share of an Optuna study (budgetnet.training.study)."""
    from budgetnet.training import study as studies

    config = training_config(args)
    if args.time_budget is not None:
        config = train_config.merge(config, {"time_budget": args.time_budget}, "--time-budget")
    space = studies.SearchSpace.load(args.space, config)
    # What makes two workers' trials comparable (not the data's path: machines differ).
    flat = config.flat()
    settings = {
        "max_params": max_params,
        **{
            key: flat[key] for key in ("epochs", "time_budget", "max_per_class", "val_size", "seed")
        },
        "objective": "best validation accuracy",
    }
    out = Path(args.out) / args.study
    check_output_dir(out, "--out")
    storage = args.storage or studies.default_storage(args.study)
    pruner = studies.make_pruner(args.pruner, args.prune_after, config.schedule.epochs)
    study = studies.open_study(
        args.study, storage, space.fingerprint(settings), args.sampler_seed, pruner
    )
    splits = load_splits(
        config.dataset.data,
        val_size=config.dataset.val_size,
        max_per_class=config.dataset.max_per_class,
        seed=config.runtime.seed,
    )
    print(
        f"study {args.study}: {len(study.trials)} trials so far; this worker runs "
        f"{args.trials} of {config.schedule.epochs} epochs each (pruner: {args.pruner}), on "
        f"{len(splits.train)} train / {len(splits.val)} val images"
    )
    # A worker stopped with SIGTERM (a scheduler, `kill`) tells the storage its trial failed,
    # as Ctrl-C does, rather than leaving it running forever.
    signal.signal(signal.SIGTERM, _interrupt)
    studies.run_worker(study, space, config, splits, args.trials, max_params, out)
    written = studies.write_results(study, config, out)
    print(f"wrote {', '.join(str(path) for path in written)}")
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _one_of(names: tuple[str, ...]) -> str:
    """ "a, b or c": the choices in help text, taken from the spec so they cannot go stale."""
    return f"{', '.join(names[:-1])} or {names[-1]}"


def main(argv: list[str] | None = None) -> int:
    default = Grid()
    parser = ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"default grid ({len(default):,} candidates): {default}",
    )
    parser.add_argument("--max-params", type=float, default=5e6, help="parameter budget")
    parser.add_argument("--grid", metavar="FILE", help="YAML file of grid keys")
    add_old_spelling(parser, "--config", "--grid")
    grid_args = parser.add_argument_group("grid (each flag overrides the grid file's key)")
    grid_args.add_argument("--stages", type=int, help="number of stages")
    grid_args.add_argument("--blocks", type=int, nargs="+", help="unit counts tried in every stage")
    grid_args.add_argument(
        "--widths", type=int, nargs="+", help="first-stage channels (then doubling)"
    )
    grid_args.add_argument("--kernels", type=int, nargs="+", help="kernel sizes (odd)")
    grid_args.add_argument("--pools", type=int, nargs="+", help="head pool windows (0 = global)")
    grid_args.add_argument("--block", help=f"unit type: {_one_of(BLOCK_TYPES)}")
    grid_args.add_argument("--stem", help=_one_of(STEMS))
    grid_args.add_argument("--shortcut", help=_one_of(SHORTCUTS))
    grid_args.add_argument("--num-classes", type=int)
    grid_args.add_argument("--input-size", type=int)
    parser.add_argument("--top", type=int, default=20, help="rows to print and write as Markdown")
    parser.add_argument("--out", default="runs/search", help="folder for the CSV and Markdown")
    ranking = parser.add_argument_group("re-ranking by short training runs")
    ranking.add_argument(
        "--train-top",
        type=int,
        default=0,
        metavar="K",
        help="train the first K candidates and rank them by val accuracy",
    )
    ranking.add_argument("--epochs", type=int, default=10, help="epochs per candidate")
    ranking.add_argument("--data", help="training data (any source budgetnet.data.sources reads)")
    ranking.add_argument("--max-per-class", type=int, help="first N training images per class")
    ranking.add_argument("--train-config", help="YAML of training settings (code/train.py's)")
    ranking.add_argument("--device", default="auto")
    study = parser.add_argument_group(
        "an Optuna study that trains (architecture and recipe sampled together; the flags "
        "above set each trial's data and schedule)"
    )
    study.add_argument("--trials", type=int, help="trials this worker runs (turns the study on)")
    study.add_argument("--study", help="study name; workers given the same name share it")
    study.add_argument(
        "--storage", help="database URL (default sqlite:///runs/search/NAME.db; e.g. "
        "postgresql://user:password@host/db for workers on many machines)",
    )  # fmt: skip
    study.add_argument("--space", help="YAML of model: and recipe: dimensions over the default")
    study.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    study.add_argument(
        "--prune-after", type=int, default=3, metavar="K",
        help="median pruner: trials that finish before any is pruned",
    )  # fmt: skip
    study.add_argument("--time-budget", type=float, help="minutes per trial (instead of --epochs)")
    study.add_argument("--sampler-seed", type=int, help="seed of this worker's TPE sampler")
    args = parser.parse_args(argv)

    if not 1 <= args.max_params <= 1e15 or args.max_params != int(args.max_params):
        raise UserError(
            f"--max-params must be a whole number from 1 to 1e15, got {args.max_params:g}"
        )
    for flag, value in (("--top", args.top), ("--train-top", args.train_top)):
        if value < 0:
            raise UserError(f"{flag} must be >= 0, got {value}")
    if args.trials is not None:
        if args.trials < 1 or not args.study:
            raise UserError("a study needs --trials N >= 1 and --study NAME")
        if args.prune_after < 0:
            raise UserError(f"--prune-after must be >= 0, got {args.prune_after}")
        return run_study(args, int(args.max_params))
    config = training_config(args) if args.train_top else None  # before anything is written
    keys = load_grid(args.grid) if args.grid else {}
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(Grid)}
    grid = Grid.from_dict({**keys, **{k: v for k, v in flags.items() if v is not None}})
    max_params = int(args.max_params)

    candidates = search(grid, max_params)
    text = format_markdown(candidates, grid, max_params, args.top)
    out = Path(args.out)
    check_output_dir(out, "--out")
    write_csv(out / "candidates.csv", candidates)
    write_markdown(out / "candidates.md", text)
    print(text)
    print(f"\nwrote {out / 'candidates.csv'} and {out / 'candidates.md'}")
    if args.train_top:
        trained = train_ranking(candidates, args, out, config)
        write_markdown(out / "trained.md", trained)
        print(f"\n{trained}\n\nwrote {out / 'trained.md'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
