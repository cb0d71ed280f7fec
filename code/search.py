"""Rank every ResNet of a grid that fits a parameter budget (analytic counts, no training).

    python code/search.py --max-params 5e6
    python code/search.py --max-params 5e6 --config my_grid.yaml --kernels 3 --top 30

Grid flags override the YAML file's keys (stages, blocks, widths, kernels, pools, block,
shortcut, num_classes, input_size); writes candidates.csv (all that fit) and candidates.md.

With `--train-top K --epochs E`, the first K candidates are then trained for E epochs each
with code/train.py's recipe (`--train-config FILE.yaml` changes it) and re-ranked by
validation accuracy on the held-out split (trained.csv / trained.md):

    python code/search.py --max-params 5e6 --train-top 5 --epochs 10 --data ../shared/data/cifar10
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from budgetnet.data.sources import load_splits
from budgetnet.errors import ArgumentParser, UserError, run_cli
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


def train_ranking(candidates, args, out: Path) -> str:
    """Short training runs of the top candidates on one data load; a Markdown table."""
    from budgetnet.training.engine import fit, model_name

    overrides = train_config.read_config_file(args.train_config) if args.train_config else {}
    overrides.pop("model", None)  # the model is the candidate
    config = train_config.merge(train_config.TrainConfig(), overrides, "--train-config")
    config = train_config.merge(
        config,
        {
            "epochs": args.epochs,
            "data": args.data,
            "max_per_class": args.max_per_class,
            "device": args.device,
            "warmup_epochs": min(config.warmup_epochs, args.epochs / 4),
        },
        "flags",
    )
    if config.val_size == 0:
        raise UserError("ranking by training needs a validation split (val_size > 0)")
    splits = load_splits(
        config.data, val_size=config.val_size, max_per_class=config.max_per_class, seed=config.seed
    )

    def validation_accuracy(spec) -> float:
        run = dataclasses.replace(config, run_dir=str(out / "train" / model_name(spec)))
        return fit(run, spec, splits=splits)["val_acc"]

    ranked = rank_by_training(candidates, validation_accuracy, args.train_top)
    # candidates.csv's columns with validation accuracy in place of the Pareto flag
    rows = [(*row(i, c)[:-1], f"{accuracy:.4f}") for i, (c, accuracy) in enumerate(ranked, 1)]
    header = (*COLUMNS[:-1], "val_acc")
    write_rows(out / "trained.csv", header, rows)
    return (
        f"Top {args.train_top} by validation accuracy after {args.epochs} epochs "
        f"({len(splits.val)} held-out images, seed {config.seed}):\n\n"
        + markdown_table(header, rows)
    )


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
    parser.add_argument("--config", help="YAML file of grid keys")
    grid_args = parser.add_argument_group("grid (each flag overrides the YAML file's key)")
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
    args = parser.parse_args(argv)

    if args.max_params < 1 or args.max_params != int(args.max_params):
        raise UserError(f"--max-params must be a whole number >= 1, got {args.max_params:g}")
    if args.top < 0:
        raise UserError(f"--top must be >= 0, got {args.top}")
    keys = load_grid(args.config) if args.config else {}
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(Grid)}
    grid = Grid.from_dict({**keys, **{k: v for k, v in flags.items() if v is not None}})
    max_params = int(args.max_params)

    candidates = search(grid, max_params)
    text = format_markdown(candidates, grid, max_params, args.top)
    out = Path(args.out)
    write_csv(out / "candidates.csv", candidates)
    write_markdown(out / "candidates.md", text)
    print(text)
    print(f"\nwrote {out / 'candidates.csv'} and {out / 'candidates.md'}")
    if args.train_top:
        trained = train_ranking(candidates, args, out)
        write_markdown(out / "trained.md", trained)
        print(f"\n{trained}\n\nwrote {out / 'trained.md'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
