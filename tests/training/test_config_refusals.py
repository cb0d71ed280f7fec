"""Config values (budgetnet.training.config): each range-checked where its field is declared,
before anything is run or written, on construction, from a file and on the command line; YAML
alias bombs refused in bounded memory; property-based fuzzing of config files (200 examples;
BUDGETNET_FUZZ_EXAMPLES=20000 runs more)."""

from __future__ import annotations

import dataclasses
import importlib
import re
import time
import tracemalloc

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from budgetnet import runtime
from budgetnet.errors import ArgumentParser, UserError
from budgetnet.models.spec import ResNetSpec
from budgetnet.models.zoo import model_spec
from budgetnet.training.config import (
    GROUPS,
    MAX_THREADS,
    SETTINGS,
    Range,
    TrainConfig,
    merge,
    range_text,
    read_config_file,
)

from conftest import REPO
from refusals import MESSAGE_LIMIT, fuzz_settings, refused
from refusals import SETTING_VALUES as _VALUES
from refusals import valid_or_refused as _valid_or_refused

FUZZ = fuzz_settings(200)


def one_line_refusal(call, match: str | None = None) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and len(message) <= MESSAGE_LIMIT, message
    if match is not None:
        assert re.search(match, message), message
    return message


# --------------------------------------------------------------------------------------------
# 1. Values out of range are refused by the group that holds them, built in code or merged from a
# file


OUT_OF_RANGE = [
    ("workers", -1, "workers must be at least 0 and at most 256, got -1"),
    ("seed", -1, "seed must be at least 0"),
    ("seed", 2**32, "seed must be at least 0 and at most 4294967295"),
    ("momentum", -0.5, r"momentum must be in \[0, 1\), got -0.5"),  # not only with decoupled
    ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
    ("crop_padding", -3, "crop_padding must be at least 0 and less than 32 pixels"),
    ("threads", 100_000, f"threads must be at least 0 and at most {MAX_THREADS}"),
    ("threads", -1, "threads must be at least 0"),
    ("ema_decay", 1.5, r"ema_decay must be in \[0, 1\]"),
    ("mixup", -1.0, "mixup must be in"),
    ("cutmix", -0.1, "cutmix must be in"),
    ("min_lr", -0.1, "min_lr must be in"),
    ("val_size", -5, "val_size must be at least 0"),
    ("max_per_class", 0, "max_per_class must be at least 1"),
    ("lookahead", -1, "lookahead must be at least 0"),
    ("patience", -1, "patience must be at least 0"),
    ("kd_temperature", 0.0, r"kd_temperature must be in \(0, 100\]"),
    ("affine_degrees", 720.0, r"affine_degrees must be in \[0, 180\] degrees"),
    ("epochs", 10**6, "epochs must be at least 1 and at most 100000"),
    ("batch_size", 2**21, "batch_size must be at least 1 and at most"),
    ("epochs", 10**5000, "epochs must be .*, got \\.\\.\\."),  # too long even to print
    ("lr", 10**400, "lr must be a finite number"),  # too large for a float
    ("device", "gpu", "device must be auto, cpu, mps, cuda or cuda:N, got 'gpu'"),
    ("aa", "rand-q5", "'q5' is no rand section"),
    ("aa", "rand-m9.5", "section m must be an integer"),
    ("aa", "augmix-w0", "section w must be an integer at least 1"),
    ("color_jitter", [0.1, 0.1, 0.1, 0.9], r"hue \(the 4th value\) must be in \[0, 0.5\]"),
    ("color_jitter", [-0.1], r"color_jitter must be 1, 3 or 4 values, each in \[0, 10\]"),
    ("color_jitter", [True], r"color_jitter\[0\] must be a finite number, got bool"),
    ("teacher", ["run"] * 65, "teacher takes 1 to 64 values"),
    ("run_dir", "runs/a\0b", "run_dir holds a NUL character"),
    ("plots_dir", "p" * 5000, "plots_dir is 5000 characters long; at most 4096"),
    ("train_splits", "train+" * 100, "train_splits is 600 characters long"),
]


@pytest.mark.parametrize(
    "name, value, match", OUT_OF_RANGE, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(OUT_OF_RANGE)]
)
def test_out_of_range_values_are_refused_on_construction(name, value, match):
    one_line_refusal(lambda: _group_of(name)(**{name: value}), match)
    one_line_refusal(lambda: TrainConfig().with_values(**{name: value}), match)
    message = one_line_refusal(lambda: merge(TrainConfig(), {name: value}, "bad.yaml"), match)
    assert message.startswith("bad.yaml: ")  # merge names where the value came from


@pytest.mark.parametrize(
    "values, match",
    [
        ({"nesterov": True, "momentum": 0.0}, "nesterov needs a momentum above 0"),
        ({"decoupled": True, "opt": "adam"}, "decoupled units are for SGD"),
        ({"cutout": 8, "reprob": 0.0}, "give it a probability"),
        ({"mixup": 0.2, "batch_size": 127}, "even batch size"),
        ({"train_splits": "test"}, "train_splits"),
        ({"opt": "muon", "sched": "onecycle"}, "onecycle cannot drive"),
        ({"jsd_loss": True}, "give an --aa augmix"),
        ({"jsd_loss": True, "aa": "augmix-m3", "altflip": True}, "does not combine"),
    ],
)
def test_settings_that_depend_on_each_other_are_checked_on_construction(values, match):
    one_line_refusal(lambda: TrainConfig().with_values(**values), match)


@pytest.mark.parametrize(
    "values, match",
    [
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"lr": float("inf")}, "lr must be a finite number"),
        ({"epochs": "10"}, "epochs must be an integer, got str '10'"),
        ({"batch_size": 12.5}, "batch_size must be an integer"),
        ({"nesterov": "yes"}, "nesterov must be true or false"),
        ({"tta": None}, "tta needs a value"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_config_values_of_the_wrong_type_are_one_line(values, match):
    refused(lambda: merge(TrainConfig(), values, "test.yaml"), match)


def _group_of(name: str) -> type:
    """The group class that holds setting `name` (built alone, it checks itself)."""
    return GROUPS[SETTINGS[name].group]


def _numeric_fields() -> list[dataclasses.Field]:
    return [s.field for s in SETTINGS.values() if s.kind.base in (int, float) and not s.kind.many]


def test_every_number_setting_declares_its_range_next_to_its_field():
    for field in _numeric_fields():
        assert "range" in field.metadata or "choices" in field.metadata, field.name
    assert "range" in SETTINGS["color_jitter"].field.metadata
    assert "lengths" in SETTINGS["teacher"].field.metadata


@pytest.mark.parametrize("field", _numeric_fields(), ids=lambda f: f.name)
def test_each_declared_range_holds_at_both_ends(field):
    limits, group = field.metadata.get("range"), _group_of(field.name)
    if limits is None:  # a choice (tta)
        one_line_refusal(lambda: group(**{field.name: 3}), field.name)
        return
    integer = SETTINGS[field.name].kind.base is int
    step = 1 if integer else max(abs(limits.low), abs(limits.high), 1) * 1e-9
    cast = int if integer else float
    for end, inside, outside in [
        (limits.low, not limits.low_open, limits.low - step),
        (limits.high, not limits.high_open, limits.high + step),
    ]:
        refused = [cast(outside)] + ([] if inside else [cast(end)])
        for value in refused:
            one_line_refusal(lambda v=value: group(**{field.name: v}), field.name)
        if inside:
            assert getattr(group(**{field.name: cast(end)}), field.name) == end


def test_the_documented_ranges_are_the_declared_ones():
    text = (REPO / "docs" / "configs.md").read_text()
    for name in SETTINGS:
        assert f"| `{name}` | {range_text(name)} |" in text, name


def test_threads_are_checked_before_torch_sets_them(monkeypatch):
    def fail(count):
        raise AssertionError(f"torch.set_num_threads({count}) was reached")

    monkeypatch.setattr(runtime.torch, "set_num_threads", fail)
    for bad in (100_000, MAX_THREADS + 1, -1, 2.0):
        one_line_refusal(lambda b=bad: runtime.configure_cpu(b), "threads must be at least 0")


def test_a_valid_config_round_trips_and_recipes_stay_valid():
    config = TrainConfig().with_values(color_jitter=0.4, lr=1, seed=2**32 - 1, threads=MAX_THREADS)
    assert config.augment.color_jitter == [0.4] and config.optimizer.lr == 1.0
    assert isinstance(config.optimizer.lr, float)
    assert TrainConfig.from_flat(config.flat(), "config.yaml") == config
    for path in sorted((REPO / "configs").glob("*.yaml")):
        values = read_config_file(path)
        values.pop("model", None)
        merge(TrainConfig(), values, str(path))


def test_range_text_words():
    assert Range(0, 1, high_open=True).text(integer=False) == "in [0, 1)"
    assert Range(1, 8, unit="steps").text(integer=True) == "at least 1 and at most 8 steps"
    assert range_text("tta") == "one of 0, 1, 2"


# --------------------------------------------------------------------------------------------
# 2. The command line: one line, exit 2, before any data is read or any run directory is made


def _assert_clean_refusal(result, fragment: str, run_dir) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "config_text, flags, fragment",
    [
        ("workers: -1\n", [], "workers must be at least 0"),
        ("", ["--threads", "100000"], "threads must be at least 0 and at most 1024"),
    ],
)
def test_train_refuses_a_bad_config_in_one_line_before_making_the_run_dir(
    tmp_path, run_script, config_text, flags, fragment
):
    # a new process: --threads 100000 used to end it with a segmentation fault (exit 139)
    config = tmp_path / "bad.yaml"
    config.write_text(config_text)
    run_dir = tmp_path / "X"
    # no data there: a refusal after loading would be about the data instead
    data = str(tmp_path / "no-data")
    argv = ["--config", str(config), "--run-dir", str(run_dir), "--data", data, *flags]
    result = run_script("code/train.py", *argv)
    _assert_clean_refusal(result, fragment, run_dir)


@pytest.mark.parametrize(
    "config_text, fragment",
    [
        ("seed: -1\n", "seed must be at least 0"),
        ("crop_padding: -3\n", "crop_padding must be at least 0"),
        ("momentum: -0.5\n", "momentum must be in [0, 1)"),
        ("ema: true\nema_decay: 1.5\n", "ema_decay must be in [0, 1]"),
        ("aa: rand-m9-z3\n", "'z3' is no rand section"),
        ("device: gpu0\n", "device must be auto, cpu"),
        ("model: {input_size: 1, stem: whiten}\n", "too small for the whiten stem"),
    ],
)
def test_train_refuses_each_class_in_process(tmp_path, run_main, config_text, fragment):
    config = tmp_path / "bad.yaml"
    config.write_text(config_text)
    run_dir = tmp_path / "X"
    argv = ["--config", str(config), "--run-dir", str(run_dir), "--data", str(tmp_path / "none")]
    _assert_clean_refusal(run_main("code/train.py", *argv), fragment, run_dir)


def test_search_checks_the_training_settings_before_writing(tmp_path, run_main):
    bad = tmp_path / "train.yaml"
    bad.write_text("workers: -1\n")
    out = tmp_path / "search"
    result = run_main(
        "code/search.py", "--widths", "32", "--blocks", "1", "--train-top", "1",
        "--train-config", str(bad), "--out", str(out),
    )  # fmt: skip
    _assert_clean_refusal(result, "--train-config: workers must be at least 0", out)
    result = run_main("code/search.py", "--train-top", "1", "--epochs", "0", "--out", str(out))
    _assert_clean_refusal(result, "flags: epochs must be at least 1", out)
    result = run_main("code/search.py", "--max-params", "inf", "--out", str(out))
    _assert_clean_refusal(result, "--max-params must be a whole number", out)


def test_aa_none_on_the_command_line_turns_randaugment_off():
    from budgetnet.cli import add_config_arguments, resolve_training

    parser = ArgumentParser()
    add_config_arguments(parser)
    config, _ = resolve_training(parser.parse_args(["--aa", "None"]))
    assert config.augment.aa is None


# --------------------------------------------------------------------------------------------
# 3. A YAML alias bomb: 600 bytes that expand to a billion items if anything formats them


def alias_bomb(depth: int = 9, width: int = 9) -> str:
    """An inline YAML list whose last item nests `depth` levels of `width` aliases of the
    level below: width**depth leaves (387 million) in about 500 bytes."""
    levels = ["&a0 [" + ", ".join(["1"] * width) + "]"]
    for i in range(1, depth):
        levels.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "[" + ", ".join(levels) + "]"


def _bounded(call) -> None:
    """`call()` within 20 s of CPU time and 50 MB of Python allocations."""
    tracemalloc.start()
    started = time.process_time()
    try:
        call()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.process_time() - started < 20
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MB"


BOMB_KEYS = ["color_jitter", "teacher", "aa", "opt", "tta", "epochs", "lr", "data", "mlflow"]
BOMB_MODEL_KEYS = ["blocks", "channels", "strides", "block", "kernel", "dropout", "head_bias"]


@pytest.mark.parametrize("key", BOMB_KEYS + [f"model.{k}" for k in BOMB_MODEL_KEYS])
def test_a_yaml_alias_bomb_is_refused_fast_in_bounded_memory(tmp_path, run_main, key):
    bomb = alias_bomb()
    if key.startswith("model."):
        text = f"model:\n  {key.removeprefix('model.')}: {bomb}\n"
    else:
        text = f"{key}: {bomb}\n"
    assert len(text) < 700
    config = tmp_path / "bomb.yaml"
    config.write_text(text)
    run_dir = tmp_path / "X"
    importlib.import_module("train")  # its imports are not what is measured
    results = []
    _bounded(
        lambda: results.append(
            run_main("code/train.py", "--config", str(config), "--run-dir", str(run_dir))
        )
    )
    result = results[0]
    _assert_clean_refusal(result, key.removeprefix("model."), run_dir)
    assert len(result.stderr) <= MESSAGE_LIMIT + 10


def test_shared_references_built_in_code_are_refused_without_expanding():
    level = [1.0] * 9
    for _ in range(8):
        level = [level] * 9  # 9**9 leaves, 81 list objects
    for key in BOMB_KEYS:
        _bounded(lambda k=key: one_line_refusal(lambda: TrainConfig().with_values(**{k: level}), k))
    base = model_spec("resnet24_b343").to_dict()
    for key in BOMB_MODEL_KEYS:
        _bounded(
            lambda k=key: one_line_refusal(lambda: ResNetSpec.from_dict({**base, k: level}), k)
        )


# --------------------------------------------------------------------------------------------
# 4. Property-based: random config files give a valid TrainConfig or a one-line refusal, never
# another exception


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(SETTINGS)), _VALUES, max_size=6))
def test_fuzz_config_files_load_as_valid_configs_or_are_refused(fuzz_dir, values):
    path = fuzz_dir / "config.yaml"
    path.write_text(yaml.safe_dump(values))

    def load() -> TrainConfig:
        loaded = read_config_file(path)
        return merge(TrainConfig(), loaded, "fuzz.yaml")

    config = _valid_or_refused(load)
    if config is not None:
        assert isinstance(config, TrainConfig)
        # what config.yaml records is itself valid (a resume rebuilds it)
        assert TrainConfig.from_flat(config.flat(), "config.yaml") == config
