"""The config's shape: groups that check themselves, flat names for everything outside the code
(files, flags, config.yaml), and run directories of older versions that still load."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import yaml

from budgetnet import runs
from budgetnet.cli import add_config_arguments, resume_settings
from budgetnet.errors import UserError
from budgetnet.training.config import (
    GROUPS,
    SETTINGS,
    AugmentConfig,
    OptimizerConfig,
    Setting,
    TrainConfig,
    merge,
)

# Text settings whose value must name something real; any other text setting takes a path.
TEXT_VALUES = {"train_splits": "train+test", "aa": "trivialaugment", "device": "cpu"}
# The settings that need another one to be on (a JSD loss compares AugMix views).
NEEDS = {"jsd_loss": {"aa": "augmix-m3-w3"}}


def other_value(name: str, setting: Setting):
    """A valid value of setting `name` that is not its default, from its declaration."""
    field, kind = setting.field, setting.kind
    if "choices" in field.metadata:
        return next(c for c in field.metadata["choices"] if c != field.default)
    if kind.base is bool:
        return not field.default
    if kind.many:
        return [0.5] if kind.base is float else ["runs/teacher"]
    if kind.base is str:
        return TEXT_VALUES.get(name, "runs/somewhere")
    limits = field.metadata["range"]
    for value in ((limits.low + limits.high) / 2, (3 * limits.low + limits.high) / 4):
        value = int(value) if kind.base is int else value
        if value != field.default:
            return value
    raise AssertionError(f"no other value for {name}")


def test_each_group_built_in_code_checks_its_values_and_its_own_dependencies():
    with pytest.raises(UserError, match="lr must be in"):
        OptimizerConfig(lr=-1.0)
    with pytest.raises(UserError, match="nesterov needs a momentum above 0"):
        OptimizerConfig(nesterov=True, momentum=0.0)
    with pytest.raises(UserError, match="batch_size must be an integer"):
        OptimizerConfig(batch_size=12.5)
    with pytest.raises(UserError, match="give it a probability"):
        AugmentConfig(cutout=8, reprob=0.0)
    assert AugmentConfig(color_jitter=0.4).color_jitter == [0.4]  # typed once, when built
    with pytest.raises(dataclasses.FrozenInstanceError):
        OptimizerConfig().lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("group", list(GROUPS))
def test_every_group_refuses_a_wrong_type_for_each_of_its_settings(group):
    for field in dataclasses.fields(GROUPS[group]):
        with pytest.raises(UserError, match=field.name):
            GROUPS[group](**{field.name: {"not": "a setting"}})


def test_settings_across_groups_are_checked_by_the_whole_config():
    optimizer = OptimizerConfig(opt="muon")
    schedule = dataclasses.replace(TrainConfig().schedule, sched="onecycle")
    with pytest.raises(UserError, match="onecycle cannot drive"):
        TrainConfig(optimizer=optimizer, schedule=schedule)
    with pytest.raises(UserError, match="even batch size"):
        TrainConfig(optimizer=OptimizerConfig(batch_size=127), augment=AugmentConfig(mixup=0.2))


@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_flat_key_round_trips_through_config_yaml(name):
    value = other_value(name, SETTINGS[name])
    base = TrainConfig().with_values(**NEEDS.get(name, {}))
    config = base.with_values(**{name: value})
    assert getattr(getattr(config, SETTINGS[name].group), name) == value
    assert config.flat()[name] == value and config != base
    written = yaml.safe_load(yaml.safe_dump(config.flat(), sort_keys=False))
    assert TrainConfig.from_flat(written, "config.yaml") == config


@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_setting_has_a_flag_of_its_own_type(name):
    setting = SETTINGS[name]
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    (action,) = [a for a in parser._actions if a.dest == name]
    assert action.option_strings[0] == "--" + name.replace("_", "-")
    value = other_value(name, setting)
    if setting.kind.base is bool:
        assert isinstance(action, argparse.BooleanOptionalAction)
        argv = [f"--{'' if value else 'no-'}{name.replace('_', '-')}"]
    else:
        assert action.type is setting.kind.base
        assert (action.nargs == "+") == setting.kind.many
        assert action.choices == setting.field.metadata.get("choices")
        argv = [action.option_strings[0], *map(str, value if setting.kind.many else [value])]
    typed = getattr(parser.parse_args(argv), name)
    base = TrainConfig().with_values(**NEEDS.get(name, {}))
    assert merge(base, {name: typed}, "flags") == base.with_values(**{name: value})


def test_unknown_keys_are_refused_by_flat_name():
    with pytest.raises(UserError, match="unknown setting.*learning_rate"):
        TrainConfig().with_values(learning_rate=0.1)
    with pytest.raises(UserError, match="^f.yaml: unknown setting.*optimizer"):
        merge(TrainConfig(), {"optimizer": {"lr": 0.1}}, "f.yaml")  # groups are not keys


# config.yaml as an older version wrote it: the flat settings under `config:` (not `settings:`),
# in their own order, without the settings added since (noise, Muon, SWA, ...), which take their
# defaults.
OLD_CONFIG_YAML = """\
config:
  data: null
  max_per_class: 50
  val_size: 40
  epochs: 3
  batch_size: 64
  opt: sgd
  lr: 0.2
  momentum: 0.9
  nesterov: true
  weight_decay: 0.0005
  sched: cosine
  warmup_epochs: 1.0
  crop_padding: 4
  hflip: 0.5
  aa: null
  reprob: 0.0
  smoothing: 0.1
  ema: false
  seed: 3
  device: cpu
  run_dir: runs/old
model: {blocks: [1], channels: [8]}
"""


def test_a_run_directory_of_an_older_version_resumes_with_defaults_for_what_it_lacks(tmp_path):
    (tmp_path / "config.yaml").write_text(OLD_CONFIG_YAML)
    args = argparse.Namespace(resume=tmp_path, device="cuda:1")  # a RESUME_FLAGS setting
    config, spec = resume_settings(args)
    saved = yaml.safe_load(OLD_CONFIG_YAML)["config"]
    flat = config.flat()
    assert {key: flat[key] for key in saved} == {**saved, "device": "cuda:1"}
    default = TrainConfig().flat()
    assert {key: flat[key] for key in set(flat) - set(saved)} == {
        key: default[key] for key in set(default) - set(saved)
    }
    assert config.optimizer.lr == 0.2 and spec.channels == (8,)


def test_run_records_hold_their_settings_under_settings_and_read_the_old_key_alike(tmp_path):
    settings = TrainConfig().with_values(seed=4).flat()
    runs.write_config(tmp_path, {"settings": settings, "model": {"blocks": [1], "channels": [8]}})
    assert list(yaml.safe_load((tmp_path / "config.yaml").read_text())) == ["settings", "model"]
    assert runs.read_config(tmp_path)["settings"] == settings
    (tmp_path / "config.yaml").write_text(OLD_CONFIG_YAML)
    record = runs.read_config(tmp_path)
    assert list(record) == ["settings", "model"]  # renamed in place, the order kept
    assert record["settings"] == yaml.safe_load(OLD_CONFIG_YAML)["config"]
