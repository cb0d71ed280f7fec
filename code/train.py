"""Train a parameter-budgeted ResNet and leave a run directory from which every figure can be
rebuilt.

    python code/train.py --blocks 3 4 3 --channels 66 132 264          # the 4.9M ResNet-24 recipe
    python code/train.py --preset cpu-quick --data ../shared/data/cifar10
    python code/train.py --resume runs/<name>                           # continue a killed run
    torchrun --nproc_per_node 2 code/train.py ...                        # DistributedDataParallel

`--preset` takes a training preset (budgetnet.training.config.PRESETS: recipe and model) or a model
preset (`python code/summary.py --list`). Settings resolve as defaults < --preset < --config <
flags; `python code/train.py --help` lists every flag with its default.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from budgetnet import runs
from budgetnet.errors import ArgumentParser, UserError, run_cli
from budgetnet.models.resnet import ResNetSpec, add_model_arguments, spec_from_args
from budgetnet.training import config as train_config
from budgetnet.training.engine import fit

MODEL_KEYS = {f.name for f in dataclasses.fields(ResNetSpec)}
# Flags that may change on --resume: where and how fast it runs, not what it computes.
RESUME_FLAGS = {"device", "workers", "resume"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and training flags (shared with lr_find.py and search.py)."""
    add_model_arguments(parser)
    train_config.add_config_arguments(parser)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--resume", type=Path, help="continue the run in this directory")
    add_arguments(parser)
    return parser.parse_args(argv)


def resolve_spec(args: argparse.Namespace, model_overrides: dict) -> ResNetSpec:
    """Model: a training preset's or config file's `model:` first, typed model flags over it."""
    overrides = dict(model_overrides)
    base = overrides.pop("preset", None)
    if args.preset and args.preset not in train_config.PRESETS:
        base = args.preset  # a model preset typed on the command line
    return spec_from_args(
        argparse.Namespace(**{**vars(args), "preset": base}), base_overrides=overrides
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.resume is not None:
        typed = {
            k
            for k, v in vars(args).items()
            if v is not None and k in MODEL_KEYS | set(train_config.FIELDS) | {"preset", "config"}
        }
        if typed - RESUME_FLAGS:
            raise UserError(
                f"--resume continues with the run's own settings; drop "
                f"{', '.join('--' + k.replace('_', '-') for k in sorted(typed - RESUME_FLAGS))}"
            )
        saved = runs.read_config(args.resume)
        config = train_config.merge(
            train_config.TrainConfig(), saved["config"], f"{args.resume}/config.yaml"
        )
        config = train_config.merge(
            config,
            {
                k: getattr(args, k)
                for k in ("device", "workers")
                if getattr(args, k, None) is not None
            },
            "flags",
        )
        fit(config, ResNetSpec.from_dict(saved["model"]), resume=args.resume)
        return 0
    config, model_overrides = train_config.resolve(args, MODEL_KEYS)
    fit(config, resolve_spec(args, model_overrides), argv=sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    run_cli(main)
