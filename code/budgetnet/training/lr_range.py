"""The learning-rate range test (Smith 2015; the LR finder the custom ResNet-9 project used):
train for a few hundred steps while the learning rate grows exponentially, and record the loss.
A good peak learning rate sits where the loss falls fastest, well before it blows up.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from budgetnet.data.sources import DataSplits
from budgetnet.errors import UserError
from budgetnet.models.resnet import ResNetSpec, build
from budgetnet.runtime import resolve_device
from budgetnet.training.augment import BatchAugment, make_batches
from budgetnet.training.config import TrainConfig
from budgetnet.training.engine import make_loss, seed_everything, train_step
from budgetnet.training.optim import make_optimizer


def lr_range_test(
    config: TrainConfig,
    spec: ResNetSpec,
    splits: DataSplits,
    *,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    steps: int = 200,
    smoothing: float = 0.95,
    blowup: float = 4.0,
) -> dict:
    """Losses (raw and exponentially smoothed) per learning rate; stops early once the
    smoothed loss exceeds `blowup` times its minimum. Returns the curve and a suggestion."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model = build(spec).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model)
    batches = make_batches(splits.train.images, splits.train.labels, config, device)
    if len(batches) == 0:  # the loop below would never take a step
        raise UserError(
            f"{len(splits.train)} training images make no batch of {config.batch_size}; "
            "lower --batch-size"
        )
    augment = BatchAugment(config, splits.normalization, spec.num_classes, spec.input_size, device)
    loss_fn = make_loss(config)
    growth = (end_lr / start_lr) ** (1 / max(steps - 1, 1))
    lrs, losses, smoothed = [], [], []
    average, epoch = 0.0, 0
    while len(lrs) < steps:
        for images, labels in batches.epoch(epoch):
            lr = start_lr * growth ** len(lrs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, _ = train_step(
                model, optimizer, augment, loss_fn, images, labels, device, config.amp
            )
            value = loss.item()
            average = smoothing * average + (1 - smoothing) * value
            lrs.append(lr)
            losses.append(value)
            smoothed.append(average / (1 - smoothing ** len(lrs)))  # bias-corrected
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


def plot_lr_range(result: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(result["lr"], result["loss"], alpha=0.3, label="loss")
    ax.plot(result["lr"], result["smoothed"], label="smoothed")
    ax.axvline(
        result["suggested_lr"],
        color="k",
        linestyle="--",
        label=f"steepest descent {result['suggested_lr']:.2g}",
    )
    ax.set(
        xscale="log",
        xlabel="learning rate (per batch)",
        ylabel="training loss",
        title="Learning-rate range test",
    )
    top = min(max(result["smoothed"]), 3 * min(result["smoothed"]))
    ax.set_ylim(top=top + 0.1 * abs(top))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
