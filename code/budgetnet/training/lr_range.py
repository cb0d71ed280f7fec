"""The learning-rate range test (Smith 2015; the LR finder the custom ResNet-9 project used):
train for a few hundred steps while the learning rate grows exponentially, and record the loss.
A good peak learning rate sits where the loss falls fastest, well before it blows up. The
network, optimizer and batches come from the trainer's own `setup`, so the test sees what a
run would.
"""

from __future__ import annotations

import math

import numpy as np

from budgetnet.data.sources import DataSplits
from budgetnet.errors import UserError
from budgetnet.models.spec import ResNetSpec
from budgetnet.training.config import TrainConfig
from budgetnet.training.engine import setup, train_step


def lr_range_test(
    config: TrainConfig,
    spec: ResNetSpec,
    splits: DataSplits,
    *,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    steps: int = 200,
    loss_ema: float = 0.95,
    blowup: float = 4.0,
) -> dict:
    """Losses (raw, and as a bias-corrected moving average of weight `loss_ema`) per learning
    rate; stops early once that average exceeds `blowup` times its minimum. Returns the curve
    and a suggestion."""
    if not 0 < start_lr < end_lr or steps < 1:
        raise UserError(
            f"the range test needs 0 < start lr < end lr and at least one step "
            f"(got {start_lr:g} to {end_lr:g} over {steps} steps)"
        )
    s = setup(config, spec, splits, log=lambda line: None)  # the model training would get
    growth = (end_lr / start_lr) ** (1 / max(steps - 1, 1))
    lrs, losses, smoothed = [], [], []
    average, epoch = 0.0, 0
    while len(lrs) < steps:
        for images, labels in s.batches.epoch(epoch):
            lr = start_lr * growth ** len(lrs)
            for group in s.optimization.optimizer.param_groups:
                group["lr"] = lr
            loss = train_step(
                s.network.trained,
                s.optimization.optimizer,
                s.augment,
                s.objective,
                images,
                labels,
                s.device,
                config.runtime.amp,
                data_filter=s.data_filter,
                step=len(lrs),
            ).loss
            value = loss.item()
            average = loss_ema * average + (1 - loss_ema) * value
            lrs.append(lr)
            losses.append(value)
            smoothed.append(average / (1 - loss_ema ** len(lrs)))  # bias-corrected
            if (
                not math.isfinite(value)
                or smoothed[-1] > blowup * min(smoothed)
                or len(lrs) == steps
            ):
                return _with_suggestion(lrs, losses, smoothed)
        epoch += 1
    return _with_suggestion(lrs, losses, smoothed)


def _with_suggestion(lrs: list[float], losses: list[float], smoothed: list[float]) -> dict:
    """The steepest descent of the smoothed loss against log(lr), over the part before the
    minimum (the rule fastai's and torch-lr-finder's suggestions use)."""
    stop = int(np.argmin(smoothed)) + 1
    if stop >= 3:
        slopes = np.gradient(np.asarray(smoothed[:stop]), np.log(np.asarray(lrs[:stop])))
        suggested = lrs[int(np.argmin(slopes))]
    else:
        suggested = lrs[0]
    return {
        "lr": lrs,
        "loss": losses,
        "smoothed": smoothed,
        "suggested_lr": suggested,
        "min_loss_lr": lrs[stop - 1],
    }
