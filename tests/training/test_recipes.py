"""Every recipe in configs/ resolves and trains a few steps on tiny data on the CPU, so none of
them can rot; docs/configs.md lists each one with its command."""

from __future__ import annotations

import json

import pytest
import yaml

from budgetnet.cli import add_training_arguments, resolve_training
from budgetnet.errors import ArgumentParser
from budgetnet.models.spec import ResNetSpec
from budgetnet.training.config import SETTINGS, TrainConfig, read_config_file
from budgetnet.training.engine import fit

from cifar_files import write_cifar10, write_cifar100
from conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# What the test changes so that a recipe trains in seconds: one epoch of two or three small
# batches, no worker processes, no TTA, float32 in the default memory order (bf16 is only fast
# on CPUs with AMX, channels_last not for 8-channel layers). The rest is the recipe's.
QUICK = ["--epochs", "1", "--warmup-epochs", "0", "--max-per-class", "3", "--batch-size", "8"]
QUICK += ["--workers", "0", "--tta", "0", "--no-amp", "--no-channels-last", "--device", "cpu"]
TINY_WIDTH = 8  # channels of every stage: the recipe's depth and layout at a fraction of the cost


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """10 classes x 10 training images in CIFAR-10 format, 100 x 2 in CIFAR-100 format."""
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root / "cifar10", per_batch=20, test_count=10)
    write_cifar100(root / "cifar100", train_count=200, test_count=20)
    return root


def test_at_least_six_recipes_ship_in_configs():
    assert len(CONFIGS) >= 6, CONFIGS


def _parse(*flags):
    parser = ArgumentParser()
    add_training_arguments(parser)
    return parser.parse_args(flags)


def _resolve(path, *flags):
    return resolve_training(_parse("--config", str(path), *flags))


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_every_recipe_trains_a_few_steps_at_tiny_width(path, tiny_data, tmp_path):
    recipe, _ = _resolve(path)
    cifar100 = recipe.dataset.data == "cifar100"
    data = tiny_data / ("cifar100" if cifar100 else "cifar10")
    val_size = "100" if cifar100 else "10"  # one image per class
    run = tmp_path / "run"
    flags = [*QUICK, "--data", str(data), "--val-size", val_size, "--run-dir", str(run)]
    config, spec = _resolve(path, *flags)
    small = ResNetSpec.from_dict(
        {
            **spec.to_dict(),
            "channels": [TINY_WIDTH] * len(spec.channels),
            "stem_channels": TINY_WIDTH if spec.stem_channels else None,
        }
    )
    results = fit(config, small, log=lambda line: None)

    assert results["epochs_run"] == 1 and 0 <= results["test_acc_tta0"] <= 1
    assert ("test_top5_tta0" in results) == cifar100  # top-5 only for many classes
    saved = yaml.safe_load((run / "config.yaml").read_text())
    file_settings = read_config_file(path)
    file_settings.pop("model", None)
    typed = TrainConfig.from_flat(file_settings, str(path)).flat()  # "none" -> None
    overridden = set(vars(_parse(*flags))) & set(SETTINGS)
    for key in file_settings:
        if key not in overridden:
            assert saved["settings"][key] == typed[key], key  # the recipe reaches the run
    assert saved["model"]["input_size"] == spec.input_size
    meta = json.loads((run / "best" / "model.json").read_text())
    if recipe.dataset.normalize == "imagenet":
        assert meta["normalization"]["source"].startswith("ImageNet mean/std")
        assert meta["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert (run / "training_log.md").exists()


def test_every_config_is_documented():
    page = (REPO / "docs" / "configs.md").read_text()
    for path in CONFIGS:
        assert f"--config configs/{path.name}" in page, path.name
