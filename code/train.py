"""Train a parameter-budgeted ResNet and leave a run directory from which every figure can be
rebuilt.

    python code/train.py --blocks 3 4 3 --channels 66 132 264          # the 4.9M ResNet-24 recipe
    python code/train.py --preset cpu-quick --data ../shared/data/cifar10
    python code/train.py --model fastres_s --config configs/fast.yaml   # the same as --preset fast
    python code/train.py --resume runs/<name>                           # continue a killed run
    torchrun --nproc_per_node 2 code/train.py ...                        # DistributedDataParallel

`--model` names a registered network (`python code/summary.py --list`); `--preset NAME` is
`--config configs/NAME.yaml`. Settings resolve as defaults < --preset < --config < flags;
`python code/train.py --help` lists every flag with its default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from budgetnet.cli import (
    add_training_arguments,
    check_training_outputs,
    resolve_training,
    resume_settings,
)
from budgetnet.errors import ArgumentParser, run_cli
from budgetnet.training.engine import fit


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--resume", type=Path, help="continue the run in this directory")
    add_training_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.resume is not None:
        config, spec = resume_settings(args)
        check_training_outputs(config)
        fit(config, spec, resume=args.resume)
        return 0
    config, spec = resolve_training(args)
    check_training_outputs(config)
    fit(config, spec, argv=sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    run_cli(main)
