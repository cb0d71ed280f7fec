"""The learning-rate schedule as closed-form arithmetic of the step (budgetnet.training.schedule):
equal at every step to timm's CosineLRScheduler and torch's OneCycleLR, the references it is
checked against, and airbench's linear triangle at exact steps."""

from __future__ import annotations

import math
import random

import pytest
import torch

from budgetnet.models.builder import build
from budgetnet.models.zoo import model_spec
from budgetnet.training import optim, schedule
from budgetnet.training.config import TrainConfig, recipe_config
from budgetnet.training.muon import Muon
from budgetnet.training.optim import Optimizers
from budgetnet.training.schedule import lr_at, make_schedule, momentum_at

EPOCHS, STEPS = 3, 7  # a small schedule: 21 optimizer steps
PEAKS = (0.1, 0.4)  # two groups with different peaks


def _optimizer(kind: str = "sgd") -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": peak} for peak in PEAKS]
    if kind == "adam":
        return torch.optim.Adam(groups, betas=(0.9, 0.999))
    return torch.optim.SGD(groups, momentum=0.9, nesterov=True)


def _momenta(optimizer) -> list[float]:
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in optimizer.param_groups]


@pytest.mark.parametrize("min_lr", [0.0, 0.01])
@pytest.mark.parametrize("warmup_epochs", [0, 1, 1.5])
def test_cosine_equals_timm_at_every_step(min_lr, warmup_epochs):
    from timm.scheduler import CosineLRScheduler

    config = TrainConfig().with_values(epochs=EPOCHS, warmup_epochs=warmup_epochs, min_lr=min_lr)
    ours, theirs = _optimizer(), _optimizer()
    set_lr = make_schedule(config, ours, STEPS)
    warmup = round(warmup_epochs * STEPS)
    timm = CosineLRScheduler(
        theirs,
        t_initial=EPOCHS * STEPS - warmup,
        lr_min=min_lr,
        warmup_t=warmup,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    for step in range(EPOCHS * STEPS):
        timm.step_update(step)
        assert set_lr(step) == theirs.param_groups[0]["lr"]
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("pct", [5 / 24, 0.3, 0.5])
def test_onecycle_equals_torch_lr_and_momentum_at_every_step(kind, pct):
    config = TrainConfig().with_values(epochs=EPOCHS, sched="onecycle", onecycle_pct=pct)
    ours, theirs = _optimizer(kind), _optimizer(kind)
    set_lr = make_schedule(config, ours, STEPS)
    torch_schedule = torch.optim.lr_scheduler.OneCycleLR(
        theirs, max_lr=list(PEAKS), total_steps=EPOCHS * STEPS, pct_start=pct
    )
    for step in range(EPOCHS * STEPS):
        if step:
            theirs.step()  # no gradients: only so that the scheduler may step without warning
            torch_schedule.step()
        assert set_lr(step) == theirs.param_groups[0]["lr"]
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
        assert _momenta(ours) == _momenta(theirs)
    if kind == "adam":
        assert all(g["betas"][1] == 0.999 for g in ours.param_groups)  # beta2 stays


def test_cosine_values_at_first_peak_and_last_steps():
    config = TrainConfig().with_values(epochs=EPOCHS, warmup_epochs=1, min_lr=0.01)
    optimizer = _optimizer()
    set_lr = make_schedule(config, optimizer, STEPS)
    assert set_lr(0) == 0.0  # the warmup starts from 0
    assert set_lr(3) == pytest.approx(0.1 * 3 / 7)
    assert set_lr(7) == pytest.approx(0.1)  # end of warmup: the peak
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.4)
    last = 0.01 + (0.1 - 0.01) / 2 * (1 + math.cos(math.pi * 13 / 14))
    assert set_lr(20) == pytest.approx(last)
    # min_lr is absolute: the group with 4x the peak ends as near min_lr
    assert optimizer.param_groups[1]["lr"] == pytest.approx(
        0.01 + (0.4 - 0.01) / 2 * (1 + math.cos(math.pi * 13 / 14))
    )
    assert lr_at(config, 21, 21, STEPS, 0.4) == 0.01  # past the end: min_lr


def test_onecycle_values_at_first_peak_and_last_steps():
    config = TrainConfig().with_values(
        epochs=4, sched="onecycle", onecycle_pct=0.25
    )  # 24 steps: peak at 5
    optimizer = _optimizer()
    set_lr = make_schedule(config, optimizer, 6)
    assert set_lr(0) == pytest.approx(0.1 / 25)
    assert _momenta(optimizer) == pytest.approx([0.95, 0.95])
    assert set_lr(5) == pytest.approx(0.1)  # 0.25 x 24 - 1
    assert _momenta(optimizer) == pytest.approx([0.85, 0.85])
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.4)
    assert set_lr(23) == pytest.approx(0.1 / 25 / 1e4)
    assert _momenta(optimizer) == pytest.approx([0.95, 0.95])
    assert momentum_at(config, 14, 24) == pytest.approx(0.9)  # halfway down: halfway back


def test_linear_and_constant_values_at_first_peak_and_last_steps():
    config = TrainConfig().with_values(
        epochs=EPOCHS, sched="linear", warmup_epochs=1, lr_start_factor=0.2, lr_end_factor=0.07
    )
    optimizer = _optimizer()
    set_lr = make_schedule(config, optimizer, STEPS)
    assert set_lr(0) == pytest.approx(0.02)
    assert set_lr(7) == pytest.approx(0.1)
    assert set_lr(20) == pytest.approx(0.1 * (1 - 0.93 * 13 / 14))
    assert optimizer.param_groups[1]["lr"] == pytest.approx(4 * set_lr(20))
    assert set_lr(21) == pytest.approx(0.007)  # lr_end_factor, one step past the last
    assert _momenta(optimizer) == [0.9, 0.9]  # only onecycle moves the momentum
    constant = make_schedule(
        TrainConfig().with_values(epochs=EPOCHS, sched="constant"), _optimizer(), STEPS
    )
    assert [constant(step) for step in (0, 10, 20)] == [0.1, 0.1, 0.1]


@pytest.mark.parametrize("sched", ["cosine", "onecycle", "linear", "constant"])
def test_set_lr_is_a_pure_function_of_the_step(sched):
    """Out of order, repeated, or from a fresh schedule (a resumed run): the same values."""
    config = TrainConfig().with_values(epochs=EPOCHS, sched=sched, warmup_epochs=1, min_lr=0.001)
    optimizer = _optimizer("adam")
    set_lr = make_schedule(config, optimizer, STEPS)

    def values(schedule, opt, step):
        return schedule(step), [g["lr"] for g in opt.param_groups], _momenta(opt)

    in_order = [values(set_lr, optimizer, step) for step in range(EPOCHS * STEPS)]
    steps = list(range(EPOCHS * STEPS)) * 2
    random.Random(0).shuffle(steps)
    for step in steps:
        assert values(set_lr, optimizer, step) == in_order[step]
    # resuming as the engine does: schedule a fresh optimizer, then load the saved groups (which
    # hold the last step's lr and momentum, not the peaks)
    resumed = _optimizer("adam")
    resume_lr = make_schedule(config, resumed, STEPS)
    resumed.load_state_dict(optimizer.state_dict())
    for step in (13, 5, 20):
        assert values(resume_lr, resumed, step) == in_order[step]


def test_onecycle_drives_the_muon_and_sgd_pair_group_by_group():
    sgd = _optimizer()
    muon = Muon([torch.nn.Parameter(torch.zeros(4, 2, 3, 3))], lr=0.02, momentum=0.6)
    pair = Optimizers(sgd, muon)
    config = TrainConfig().with_values(epochs=EPOCHS, sched="onecycle")
    set_lr = make_schedule(config, pair, STEPS)
    set_lr(20)
    total = EPOCHS * STEPS
    expected = [lr_at(config, 20, total, STEPS, peak) for peak in (*PEAKS, 0.02)]
    assert [g["lr"] for g in pair.param_groups] == expected
    assert _momenta(pair) == [momentum_at(config, 20, total)] * 3


def test_linear_schedule_at_exact_steps():
    config = recipe_config("fast").with_values(epochs=10, warmup_epochs=2.3)
    model = build(model_spec("fastres_s"))
    optimizer = optim.make_optimizer(config, model)
    set_lr = schedule.make_schedule(config, optimizer, steps_per_epoch=48)
    peak = config.optimizer.effective_lr
    assert set_lr(0) == pytest.approx(0.2 * peak)  # airbench's triangle starts at 0.2
    assert set_lr(110) == pytest.approx(peak)  # round(2.3 * 48): the peak
    assert set_lr(55) == pytest.approx((0.2 + 0.8 * 55 / 110) * peak)
    assert set_lr(480) == pytest.approx(0.07 * peak)  # the end
    assert set_lr(295) == pytest.approx((1 - 0.93 * 185 / 370) * peak)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(64 * set_lr(295))
