"""The learning-rate schedule: a closed-form function of the optimizer step, its phases below.

`make_schedule` returns `set_lr(step)`, which writes the values of optimizer step `step`
(0-based, of T = epochs x steps_per_epoch) into every parameter group and returns group 0's lr.
It keeps no state, so resuming needs nothing but the step. `peak` is a group's lr when the
schedule is made (each group keeps its own); W = round(warmup_epochs x steps_per_epoch).

cosine (as timm's CosineLRScheduler: warmup_prefix, warmup_lr_init 0, stepped per update)
    step < W        lr = step * (peak / W)                                  warmup from 0
    W <= step < T   lr = min_lr + (peak - min_lr) / 2 * (1 + cos(pi * (step - W) / (T - W)))
    step >= T       lr = min_lr
  min_lr is absolute: every group ends at the same min_lr, whatever its peak.

onecycle (as torch's OneCycleLR: two phases, cosine anneal, div_factor 25, final_div_factor 1e4)
    anneal(a, b, x) = b + (a - b) / 2 * (1 + cos(pi * x)),  E = onecycle_pct * T - 1 (a float)
    step <= E       lr = anneal(peak / 25, peak, step / E)
                    momentum = anneal(0.95, 0.85, step / E)
    step > E        lr = anneal(peak, peak / 25 / 1e4, (step - E) / (T - 1 - E))
                    momentum = anneal(0.85, 0.95, (step - E) / (T - 1 - E))
  momentum is SGD's momentum or Adam's beta1 (OneCycleLR's cycle_momentum), in every group that
  has one, so the lr and the momentum move in opposite directions.

linear (airbench's triangle: 0.2 -> 1 at 23% -> 0.07 in its recipe), s = lr_start_factor,
e = lr_end_factor, S = max(T - W, 1)
    step < W        lr = peak * (s + (1 - s) * step / W)
    step >= W       lr = peak * (1 + (e - 1) * min(step - W, S) / S)        e x peak at step T

constant (the recipes of projects that set no schedule)
    lr = peak

SWA (--swa with --swa-lr; any schedule above), A = swa_start_epoch x steps_per_epoch
    step >= A       lr = peak * swa_lr / lr                 held constant while weights average

The expressions are evaluated in timm's and torch's order, so the values equal theirs exactly.

Progressive resizing (--progressive-size S0, --progressive-until u), by epoch e of E, full size S
    e < u * E       side = round(S0 + (S - S0) * e / (u * E))     small images, cheap steps
    e >= u * E      side = S                                      the test images' size
"""

from __future__ import annotations

import math
from collections.abc import Callable

from budgetnet.training.config import TrainConfig

# torch OneCycleLR's defaults, which the onecycle recipes were tuned with
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4
BASE_MOMENTUM = 0.85
MAX_MOMENTUM = 0.95


def warmup_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """W: the optimizer steps of the cosine warmup, or where the linear schedule peaks."""
    return round(config.schedule.warmup_epochs * steps_per_epoch)


def linear_factor(config: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """The piecewise-linear schedule as a fraction of the peak at optimizer step `step`:
    lr_start_factor at step 0, 1 at step W, lr_end_factor at step `total`."""
    peak, start = warmup_steps(config, steps_per_epoch), config.schedule.lr_start_factor
    if step < peak:
        return start + (1 - start) * step / peak
    span = max(total - peak, 1)
    return 1 + (config.schedule.lr_end_factor - 1) * min(step - peak, span) / span


def _cosine(config: TrainConfig, step: int, total: int, steps_per_epoch: int, peak: float) -> float:
    warmup, low = warmup_steps(config, steps_per_epoch), config.schedule.min_lr
    if step < warmup:
        return step * (peak / warmup)
    t, span = step - warmup, total - warmup
    if t >= span:  # past the one cycle timm runs (its cycle_limit 1)
        return low
    return low + 0.5 * (peak - low) * (1 + math.cos(math.pi * t / span))


def _anneal(start: float, end: float, pct: float) -> float:
    """torch OneCycleLR's cosine anneal from `start` (pct 0) to `end` (pct 1)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _onecycle_phase(config: TrainConfig, step: int, total: int) -> tuple[bool, float]:
    """(whether `step` is in the rising phase, how far through its phase it is, 0 to 1)."""
    rise_end = float(config.schedule.onecycle_pct * total) - 1  # torch's end step: not rounded
    if step <= rise_end:
        # torch divides 0 by 0 when the rise ends at step 0; that step is the peak
        return True, step / rise_end if rise_end > 0 else 1.0
    return False, (step - rise_end) / (total - 1 - rise_end)


def swa_start_epoch(config: TrainConfig) -> int:
    """The first epoch (0-based) whose weights stochastic weight averaging takes."""
    epochs = config.schedule.epochs
    return min(round(config.averaging.swa_start * epochs), epochs - 1)


def lr_at(
    config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int, peak: float
) -> float:
    """The learning rate at optimizer step `step` of a group whose peak lr is `peak`."""
    swa_lr, sched = config.averaging.swa_lr, config.schedule.sched
    swa_held = config.averaging.swa and swa_lr is not None
    if swa_held and step >= swa_start_epoch(config) * steps_per_epoch:
        return peak * swa_lr / config.optimizer.lr  # each group keeps its ratio to the base
    if sched == "constant":
        return peak
    if sched == "linear":
        return peak * linear_factor(config, step, total_steps, steps_per_epoch)
    if sched == "cosine":
        return _cosine(config, step, total_steps, steps_per_epoch, peak)
    if sched == "onecycle":
        rising, pct = _onecycle_phase(config, step, total_steps)
        initial = peak / ONECYCLE_DIV_FACTOR
        if rising:
            return _anneal(initial, peak, pct)
        return _anneal(peak, initial / ONECYCLE_FINAL_DIV_FACTOR, pct)
    raise ValueError(f"unknown schedule {sched!r}")


def momentum_at(config: TrainConfig, step: int, total_steps: int) -> float | None:
    """The momentum (Adam: beta1) at optimizer step `step`, or None where the schedule leaves
    the optimizer's own: only onecycle cycles it."""
    if config.schedule.sched != "onecycle":
        return None
    rising, pct = _onecycle_phase(config, step, total_steps)
    if rising:
        return _anneal(MAX_MOMENTUM, BASE_MOMENTUM, pct)
    return _anneal(BASE_MOMENTUM, MAX_MOMENTUM, pct)


def _set_momentum(group: dict, momentum: float) -> None:
    if "betas" in group:  # torch prefers beta1 too when an optimizer has both
        group["betas"] = (momentum, *group["betas"][1:])
    elif "momentum" in group:
        group["momentum"] = momentum


def make_schedule(config: TrainConfig, optimizer, steps_per_epoch: int) -> Callable[[int], float]:
    """`set_lr(step)`: write the lr of optimizer step `step` into every group of `optimizer` (a
    torch optimizer or several stepped as one), each from its own peak, and onecycle's momentum
    into every group that has one; return group 0's lr. The groups' lrs when this is called are
    the peaks, so make the schedule before the first `set_lr`."""
    total = config.schedule.epochs * steps_per_epoch
    peaks = [group["lr"] for group in optimizer.param_groups]

    def set_lr(step: int) -> float:
        momentum = momentum_at(config, step, total)
        # read the groups anew each step: load_state_dict replaces them
        groups = optimizer.param_groups
        for group, peak in zip(groups, peaks, strict=True):
            group["lr"] = lr_at(config, step, total, steps_per_epoch, peak)
            if momentum is not None:
                _set_momentum(group, momentum)
        return groups[0]["lr"]

    return set_lr


def image_size_at(config: TrainConfig, epoch: int, full: int) -> int:
    """The side of epoch `epoch`'s training images (progressive resizing; `full` when off)."""
    schedule = config.schedule
    start, growing = schedule.progressive_size, schedule.progressive_until * schedule.epochs
    if not start or epoch >= growing:
        return full
    return round(start + (full - start) * epoch / growing)
