"""The argument plumbing every script shares: model flags, training flags, release flags.

Scripts in code/ and inference.py stay thin: they build a parser from these helpers, call the
library and print. Nothing below this module imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch

from budgetnet import runs
from budgetnet.errors import UserError, brief, positive_int, reject_unknown
from budgetnet.evaluation.infer import BATCH_SIZE
from budgetnet.files import check_output_dir
from budgetnet.models.complexity import PARAMETER_BUDGET
from budgetnet.models.spec import BLOCK_TYPES, SHORTCUTS, STEMS, ResNetSpec
from budgetnet.models.zoo import DEFAULT_MODEL, MODELS, model_spec
from budgetnet.runtime import resolve_device
from budgetnet.training.config import (
    SETTINGS,
    Setting,
    TrainConfig,
    merge,
    range_text,
    read_config_file,
    recipe_file,
)

MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ResNetSpec))
# Settings that may change on --resume: where and how fast it runs, not what it computes.
RESUME_FLAGS = {"device", "workers"}


# --------------------------------------------------------------------------------------------
# The model: a registered name (--model), then one flag per spec field.


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "model", f"a registered model (default {DEFAULT_MODEL}); flags override its fields"
    )
    g.add_argument("--model", metavar="NAME", help=f"one of: {', '.join(MODELS)}")
    g.add_argument("--blocks", type=int, nargs="+", metavar="B", help="units per stage")
    g.add_argument("--channels", type=int, nargs="+", metavar="C", help="channels per stage")
    g.add_argument("--kernel", type=int, metavar="F", help="kernel size of the units' convs")
    g.add_argument("--pool", type=int, metavar="P", help="head pooling window (0 = global)")
    g.add_argument("--pool-type", metavar="{avg,max}", help="head pooling")
    g.add_argument("--block", metavar="{" + ",".join(BLOCK_TYPES) + "}", help="unit type")
    g.add_argument("--expansion", type=int, help="bottleneck output / inner channels")
    g.add_argument(
        "--stem", metavar="{" + ",".join(STEMS) + "}",
        help="3x3/1; 7x7/2 + max-pool; or the frozen 2x2 whitening conv",
    )  # fmt: skip
    g.add_argument("--stem-channels", type=int, help="stem output channels (default channels[0])")
    g.add_argument("--shortcut", metavar="{" + ",".join(SHORTCUTS) + "}", help="when shapes change")
    g.add_argument("--strides", type=int, nargs="+", help="stride per stage (default 1 2 2 ...)")
    g.add_argument("--dropout", type=float, help="dropout inside every residual unit")
    g.add_argument("--head-dropout", type=float, help="dropout before the classifier")
    g.add_argument("--num-classes", type=int)
    g.add_argument("--input-size", type=int, help="image side in pixels")
    g.add_argument("--bn-momentum", type=float, help="BatchNorm statistics momentum (PyTorch's)")
    g.add_argument(
        "--head-bias", action=argparse.BooleanOptionalAction, default=None,
        help="a bias in the classifier",
    )  # fmt: skip
    g.add_argument("--logit-scale", type=float, help="fixed factor on the logits")


def spec_from_args(
    args: argparse.Namespace, file_model: dict[str, Any] | None = None
) -> ResNetSpec:
    """The registered model (--model, else a config file's `model: name`, else the default),
    the file's spec fields over it (not when --model names another network), then the model
    flags typed on the command line."""
    fields = dict(file_model or {})
    name = fields.pop("name", None) or DEFAULT_MODEL
    if getattr(args, "model", None):
        name, fields = args.model, {}
    typed = {key: value for key in MODEL_KEYS if (value := getattr(args, key, None)) is not None}
    return ResNetSpec.from_dict({**model_spec(name).to_dict(), **fields, **typed})


def _file_model(value: Any, where: str) -> dict[str, Any]:
    """A config file's `model:`: a registered name, or spec fields with an optional `name`."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, dict):
        raise UserError(f"{where}: model must be a name or a mapping, got {brief(value)}")
    reject_unknown(value, ("name", *MODEL_KEYS), "model setting", where)
    return dict(value)


# --------------------------------------------------------------------------------------------
# Training settings: one flag per setting (by its flat name), recipes as config files.


def _flag_count(setting: Setting) -> dict[str, Any]:
    """argparse's nargs (and const) for a setting: lists take values, a field with a `bare`
    value in its metadata may be given without one (`--mlflow` alone)."""
    if setting.kind.many:
        return {"nargs": "+"}
    if "bare" in setting.field.metadata:
        return {"nargs": "?", "const": setting.field.metadata["bare"]}
    return {}


def _flag_help(name: str, setting: Setting, count: dict[str, Any]) -> str:
    """The range a value must be in (argparse lists choices itself), then the default."""
    bare = f"; alone: {count['const']}" if "const" in count else ""
    default = f"(default {setting.field.default}{bare})"
    if setting.kind.base is bool or "choices" in setting.field.metadata:
        return default
    words = range_text(name)
    if setting.kind.base is not str:  # only text flags read "none"; a number flag is typed
        words = words.removesuffix(" (or none)")
    return f"{words} {default}"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, named like timm's (`--warmup-epochs`, `--reprob`, ...), of the
    setting's own type: bools as --x / --no-x, lists as several values. Defaults are
    suppressed so that only flags the user typed override the config."""
    group = parser.add_argument_group("training (defaults: budgetnet.training.config.TrainConfig)")
    group.add_argument("--config", help="a YAML file of settings (and `model:`)")
    group.add_argument("--preset", metavar="NAME", help="a recipe: --config configs/NAME.yaml")
    for name, setting in SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        count = _flag_count(setting)
        if setting.kind.base is bool:
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=_flag_help(name, setting, count),
            )
            continue
        choices = setting.field.metadata.get("choices")
        group.add_argument(
            flag,
            type=setting.kind.base,
            choices=choices,
            default=argparse.SUPPRESS,
            metavar=None if choices else name.upper(),
            help=_flag_help(name, setting, count),
            **count,
        )


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Model and training flags (train.py, lr_find.py)."""
    add_model_arguments(parser)
    add_config_arguments(parser)


def resolve_training(args: argparse.Namespace) -> tuple[TrainConfig, ResNetSpec]:
    """Settings resolve as defaults < --preset (configs/NAME.yaml) < --config < flags; the model
    as the files' `model:` < --model < model flags."""
    config, model = TrainConfig(), {}
    files = [recipe_file(args.preset)] if getattr(args, "preset", None) else []
    files += [Path(args.config)] if getattr(args, "config", None) else []
    for path in files:
        values = read_config_file(path)
        part = _file_model(values.pop("model", None), str(path))
        model = part if "name" in part else {**model, **part}  # a named model starts afresh
        config = merge(config, values, str(path))
    typed = {name: getattr(args, name) for name in SETTINGS if hasattr(args, name)}
    return merge(config, typed, "command line"), spec_from_args(args, model)


def check_training_outputs(config: TrainConfig) -> None:
    """--run-dir and --plots-dir refused before the data loads when they cannot be
    folders (an existing file, a name longer than the file system allows, a link loop)."""
    outputs = config.outputs
    for flag, path in (("--run-dir", outputs.run_dir), ("--plots-dir", outputs.plots_dir)):
        if path:
            check_output_dir(path, flag)


def resume_settings(args: argparse.Namespace) -> tuple[TrainConfig, ResNetSpec]:
    """A killed run's own settings (its config.yaml), with only RESUME_FLAGS typed over them."""
    typed = {
        key
        for key, value in vars(args).items()
        if value is not None and key in {*MODEL_KEYS, *SETTINGS, "model", "preset", "config"}
    }
    if typed - RESUME_FLAGS:
        raise UserError(
            "--resume continues with the run's own settings; drop "
            f"{', '.join('--' + k.replace('_', '-') for k in sorted(typed - RESUME_FLAGS))}"
        )
    saved = runs.read_config(args.resume)
    # flat keys of any version of config.yaml: a setting it lacks takes its default
    config = TrainConfig.from_flat(saved[runs.SETTINGS_KEY], f"{args.resume}/config.yaml")
    config = merge(config, {key: getattr(args, key) for key in typed}, "flags")
    return config, ResNetSpec.from_dict(saved["model"])


# --------------------------------------------------------------------------------------------
# Releases: which trained models run, where and how (inference.py, evaluate.py).


def add_release_arguments(parser: argparse.ArgumentParser, default_checkpoint: str) -> None:
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
    parser.add_argument(
        "--max-params",
        type=parameter_count,
        default=PARAMETER_BUDGET,
        help=f"refuse models (an ensemble counts every member) over this many parameters "
        f"(default {PARAMETER_BUDGET:,}, the competition's rule; 0 = no check)",
    )


def parameter_count(text: str) -> int:
    """An argparse type: a whole, non-negative number of parameters ("5e6" allowed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
    if not value >= 0 or value != int(value) or value > 1e15:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text[:40]!r}")
    return int(value)


def device_from_arg(name: str) -> torch.device:
    """--device as a torch device; a name torch does not know, or CUDA on a machine without
    it, is a one-line UserError rather than a failure at the first tensor moved."""
    try:
        device = resolve_device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA device (use cpu or auto)")
    return device
