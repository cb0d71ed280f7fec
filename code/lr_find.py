"""Learning-rate range test: grow the learning rate exponentially over a few hundred steps and
plot the training loss against it (the LR finder of the custom ResNet-9 project).

    python code/lr_find.py --model resnet24_b343 --data ../shared/data/cifar10 --out lr_find.png

Takes the model and training flags of code/train.py (optimizer, batch size, augmentation);
prints the learning rate of steepest loss descent, and writes the plot and a CSV.
"""

from __future__ import annotations

import csv
from pathlib import Path

from budgetnet.cli import add_training_arguments, resolve_training
from budgetnet.data.sources import load_splits
from budgetnet.errors import ArgumentParser, positive_int, run_cli
from budgetnet.evaluation.figures import lr_range_figure, save_figure
from budgetnet.files import atomic_write, check_output_file
from budgetnet.training.lr_range import lr_range_test


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
    parser.add_argument("--steps", type=positive_int, default=200)
    add_training_arguments(parser)
    args = parser.parse_args(argv)
    config, spec = resolve_training(args)
    check_output_file(args.out, "--out")
    check_output_file(args.out.with_suffix(".csv"), "--out")
    splits = load_splits(
        config.dataset.data,
        val_size=0,
        max_per_class=config.dataset.max_per_class,
        seed=config.runtime.seed,
    )
    result = lr_range_test(
        config, spec, splits, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps
    )
    figure = lr_range_figure(
        result["lr"], result["loss"], result["smoothed"], result["suggested_lr"]
    )
    save_figure(figure, args.out)
    with atomic_write(args.out.with_suffix(".csv"), newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["lr", "loss", "smoothed"])
        writer.writerows(zip(result["lr"], result["loss"], result["smoothed"], strict=True))
    print(
        f"{len(result['lr'])} steps; steepest descent at lr {result['suggested_lr']:.3g} per "
        f"batch of {config.optimizer.batch_size} (minimum loss at {result['min_loss_lr']:.3g}); "
        f"plot {args.out}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
