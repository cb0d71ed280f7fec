"""`--time-budget`: epochs resolved from a measured step rate (on a fake clock), recorded in
config.yaml, and a run that then trains exactly as `--epochs N` would."""

from __future__ import annotations

import pytest
import torch
import yaml

from budgetnet.errors import UserError
from budgetnet.training import budget, engine

from tiny import TINY_SPEC, TRAIN_FLAGS, tiny_config


class FakeClock:
    """A clock that only moves when a training step runs: each step takes `step` seconds."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        return self.now

    def train_step(self, *args, **kwargs):
        self.now += self.step
        return engine.train_step(*args, **kwargs)


def scratch_session(cifar, tmp_path, minutes: float, **overrides):
    config = tiny_config(cifar, tmp_path, time_budget=minutes, **overrides)
    return engine.setup(config, TINY_SPEC, initialise=False, log=lambda line: None)


@pytest.mark.parametrize("minutes,seconds_per_step,epochs", [(1.0, 3.0, 2), (2.0, 3.0, 6)])
def test_epochs_follow_from_the_measured_step_rate(
    cifar, tmp_path, minutes, seconds_per_step, epochs
):
    session = scratch_session(cifar, tmp_path, minutes, batch_size=32)
    assert len(session.batches) == 5  # 160 training images (40 held out) / 32
    clock, lines = FakeClock(seconds_per_step), []
    resolved = budget.resolve_epochs(
        session, clock.train_step, clock(), log=lines.append, clock=clock
    )
    # measuring took 2 warm-up + 5 timed steps; inference costs nothing on this clock
    left = 60 * minutes - (budget.WARMUP_STEPS + budget.MEASURED_STEPS) * seconds_per_step
    assert resolved.schedule.epochs == epochs == int(left // (5 * seconds_per_step))
    assert lines == [
        f"time budget {minutes:g} min: {seconds_per_step:.2f} s/step x 5 steps = "
        f"{5 * seconds_per_step / 60:.1f} min/epoch (measured on 5 steps) -> {epochs} epochs"
    ]
    assert resolved.with_values(epochs=session.config.schedule.epochs) == session.config


def test_validation_and_the_final_test_count_against_the_budget(cifar, tmp_path):
    session = scratch_session(cifar, tmp_path, 1.0, tta=2)
    splits = session.splits  # 40 validation, 50 test images
    plain = budget.epochs_within(session.config, 5, 1.0, 0.0, splits, measured=0)
    assert plain.epochs == 12
    # 0.05 s per image: 2 s per validation pass, 50 x (1 + 6 TTA views) x 0.05 = 17.5 s of test
    costly = budget.epochs_within(session.config, 5, 1.0, 0.05, splits, measured=0)
    assert costly.epochs == int((60 - 17.5) // (5 + 2))


def test_a_budget_too_small_for_one_epoch_is_refused_in_one_line(cifar, tmp_path):
    session = scratch_session(cifar, tmp_path, 0.01)
    with pytest.raises(UserError, match="one epoch takes about .* raise --time-budget"):
        budget.epochs_within(session.config, 5, 1.0, 0.0, session.splits, measured=0.5)


def test_a_budgeted_run_records_its_epochs_and_trains_as_that_many_epochs_would(
    cifar, tmp_path, run_main, monkeypatch
):
    # The rates as measured on a machine where a step takes 1 s (the run itself is real).
    monkeypatch.setattr(budget, "_time_steps", lambda session, step, clock: 1.0)
    monkeypatch.setattr(budget, "_time_inference", lambda session, clock: 0.0)
    budgeted, fixed = tmp_path / "budgeted", tmp_path / "fixed"
    flags = [*TRAIN_FLAGS, "--data", str(cifar), "--seed", "1"]
    result = run_main("code/train.py", *flags, "--time-budget", "0.4", "--run-dir", str(budgeted))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "time budget 0.4 min: 1.00 s/step x 5 steps" in result.stdout
    config = yaml.safe_load((budgeted / "config.yaml").read_text())["settings"]
    epochs = config["epochs"]  # 24 s less loading and measuring, 5 s an epoch
    assert config["time_budget"] == 0.4 and 1 <= epochs <= 4
    assert len((budgeted / "history.csv").read_text().splitlines()) == 1 + epochs
    result = run_main("code/train.py", *flags, "--epochs", str(epochs), "--run-dir", str(fixed))
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (torch.load(run / "last.pt", weights_only=True) for run in (budgeted, fixed))
    for name, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][name]), name


def test_time_budget_must_be_positive(cifar, tmp_path):
    with pytest.raises(UserError, match="time_budget"):
        from budgetnet.training.config import TrainConfig, merge

        merge(TrainConfig(), {"time_budget": 0.0}, "test")
