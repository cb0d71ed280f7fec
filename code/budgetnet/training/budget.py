"""`--time-budget MINUTES`: the number of epochs that ends a run inside a wall-clock budget.

The run's own steps are timed on a scratch session (same data, model, batch size and
augmentation) before the real one is made: a few untimed warm-up steps, then `MEASURED_STEPS`
timed ones, and one validation pass over a sample of the validation images. With those rates

    epochs = floor((budget - measuring - final test) / (steps per epoch x s/step + val s))

and the run then trains exactly as `--epochs N` would (the scratch session is thrown away, the
real one seeded afresh), so its closed-form schedule is the one of N epochs. Resuming never
measures again: config.yaml records the resolved epochs beside the budget.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

from budgetnet.errors import UserError
from budgetnet.evaluation.infer import infer, view_count
from budgetnet.training.config import TrainConfig
from budgetnet.training.distributed import reduce

WARMUP_STEPS = 2  # untimed: the first steps pay for allocations and kernel choices
MEASURED_STEPS = 5
VAL_SAMPLE = 512  # validation images timed to estimate one validation pass


class Estimate(NamedTuple):
    epochs: int
    step_seconds: float  # one optimizer step

    def note(self, budget_minutes: float, steps_per_epoch: int) -> str:
        epoch_minutes = steps_per_epoch * self.step_seconds / 60
        return (
            f"time budget {budget_minutes:g} min: {self.step_seconds:.2f} s/step x "
            f"{steps_per_epoch} steps = {epoch_minutes:.1f} min/epoch (measured on "
            f"{MEASURED_STEPS} steps) -> {self.epochs} epochs"
        )


def resolve_epochs(
    session,
    step: Callable,
    started: float,
    *,
    log: Callable[[str], None] = print,
    clock: Callable[[], float] = time.perf_counter,
) -> TrainConfig:
    """The scratch `session`'s config with `epochs` set to fit its `time_budget` minutes (one
    line logged). `step` is the trainer's train_step; `started`: the `clock()` reading when
    the run began, so that loading and measuring count against the budget. Every process of a
    distributed run resolves the same epochs from the mean of their rates."""
    s = session
    rates = [_time_steps(s, step, clock), _time_inference(s, clock)]
    step_seconds, image_seconds = (r / s.ddp.world for r in reduce(rates, s.device, s.ddp.world))
    estimate = epochs_within(
        s.config, len(s.batches), step_seconds, image_seconds, s.splits,
        measured=clock() - started,
    )  # fmt: skip
    log(estimate.note(s.config.schedule.time_budget, len(s.batches)))
    return s.config.with_values(epochs=estimate.epochs)


def epochs_within(
    config: TrainConfig,
    steps_per_epoch: int,
    step_seconds: float,
    image_seconds: float,
    splits,
    measured: float,
) -> Estimate:
    """The most whole epochs whose training, per-epoch validation and final test report fit
    what is left of the budget after measuring; a budget too small for one is refused."""
    val = len(splits.val) if splits.val is not None else 0
    test = len(splits.test) if splits.test is not None else 0
    test_views = sum(view_count(level) for level in {0, config.evaluation.tta})
    epoch = steps_per_epoch * step_seconds + val * image_seconds
    minutes = config.schedule.time_budget
    left = 60 * minutes - measured - test * test_views * image_seconds
    epochs = math.floor(left / epoch) if epoch > 0 else 0
    if epochs < 1:
        raise UserError(
            f"time budget {minutes:g} min: one epoch takes about {epoch / 60:.1f} "
            f"min here and {max(left, 0) / 60:.1f} min are left after measuring; raise "
            "--time-budget or shrink the model or data"
        )
    return Estimate(epochs, step_seconds)


def _time_steps(session, step: Callable, clock: Callable[[], float]) -> float:
    """Seconds per optimizer step over MEASURED_STEPS steps, after WARMUP_STEPS."""
    s = session
    s.network.model.train()
    wanted = WARMUP_STEPS + MEASURED_STEPS
    batches = _cycle(s.batches, wanted)
    start = None
    for i, (images, labels) in enumerate(batches):
        if i == WARMUP_STEPS:
            _synchronize(s.device)
            start = clock()
        s.optimization.set_lr(0)
        step(
            s.network.trained, s.optimization.optimizer, s.augment, s.objective, images, labels,
            s.device, s.config.runtime.amp, data_filter=s.data_filter, step=i,
        )  # fmt: skip
    _synchronize(s.device)
    return (clock() - start) / MEASURED_STEPS


def _cycle(batches, count: int):
    """The first `count` training batches, epoch after epoch if one epoch has fewer."""
    produced, epoch = 0, 0
    while produced < count:
        for batch in batches.epoch(epoch):
            yield batch
            produced += 1
            if produced == count:
                return
        epoch += 1


def _time_inference(session, clock: Callable[[], float]) -> float:
    """Seconds to infer one image (no TTA), from a sample of the validation (or training)
    images, timed after one warm-up batch."""
    s = session
    source = s.splits.val if s.splits.val is not None else s.splits.train
    images = source.images[:VAL_SAMPLE]
    run = functools.partial(
        infer,
        s.network.model,
        preprocessing=s.preprocessing,
        device=s.device,
        amp=s.config.runtime.amp,
    )
    run(images[:32])
    start = clock()
    run(images)
    return (clock() - start) / len(images)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
