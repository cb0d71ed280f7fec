"""Learning-rate range test: grow the learning rate exponentially over a few hundred steps and
plot the training loss against it (the LR finder of the custom ResNet-9 project).

    python code/lr_find.py --preset resnet24_b343 --data ../shared/data/cifar10 --out lr_find.png

Takes the model and training flags of code/train.py (optimizer, batch size, augmentation);
prints the learning rate of steepest loss descent, and writes the plot and a CSV.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import train
from budgetnet.data.sources import load_splits
from budgetnet.errors import ArgumentParser, run_cli
from budgetnet.files import atomic_write
from budgetnet.training.lr_range import lr_range_test, plot_lr_range


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("lr_find.png"),
        help="the plot (a CSV of the curve is written beside it)",
    )
    parser.add_argument("--start-lr", type=float, default=1e-6)
    parser.add_argument("--end-lr", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=200)
    train.add_arguments(parser)
    args = parser.parse_args(argv)
    config, model_overrides = train.train_config.resolve(args, train.MODEL_KEYS)
    spec = train.resolve_spec(args, model_overrides)
    splits = load_splits(
        config.data, val_size=0, max_per_class=config.max_per_class, seed=config.seed
    )
    spec = dataclasses.replace(spec, num_classes=len(splits.train.classes))
    result = lr_range_test(
        config, spec, splits, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps
    )
    plot_lr_range(result, args.out)
    with atomic_write(args.out.with_suffix(".csv"), newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["lr", "loss", "smoothed"])
        writer.writerows(zip(result["lr"], result["loss"], result["smoothed"], strict=True))
    print(
        f"{len(result['lr'])} steps; steepest descent at lr {result['suggested_lr']:.3g} per "
        f"batch of {config.batch_size} (minimum loss at {result['min_loss_lr']:.3g}); "
        f"plot {args.out}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
