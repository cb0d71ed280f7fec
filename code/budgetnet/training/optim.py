"""The optimizer, from a TrainConfig (its learning-rate schedule: budgetnet.training.schedule).

Parameter groups: weights (decayed), BatchNorm biases (lr x bias_lr_scale) and the remaining
BatchNorm and bias parameters (decayed only with bias_decay). Frozen parameters (the whitening
stem's filters, the fixed BatchNorm scales of fast networks) are left out. With `opt muon` the
convolution filters go to Muon and the rest to SGD, stepped together as one optimizer.
timm's `param_groups_weight_decay` makes the decay/no-decay split only: the BN biases' own
learning rate (airbench's 64x) and the decay kept per step need the groups below.
"""

from __future__ import annotations

import torch
from torch import nn

from budgetnet.training.config import TrainConfig
from budgetnet.training.muon import Muon


def param_groups(config: TrainConfig, model: nn.Module, skip: set[int] = frozenset()) -> list:
    """The trainable parameters not in `skip` (ids), in groups with their peak lr and decay.

    Group 0 always holds weights at the base learning rate: the schedule reports its lr.
    Decaying BatchNorm scales and biases only shrinks them and usually hurts; airbench decays
    them anyway (bias_decay). A group with a larger lr keeps its decay per step: torch decays by
    lr x weight_decay, so its weight_decay is divided by the same factor."""
    bn_biases = {
        id(m.bias)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None
    }
    optimizer = config.optimizer
    lr, decay = optimizer.effective_lr, optimizer.effective_weight_decay
    buckets: dict[str, list] = {"weights": [], "bn_biases": [], "other": []}
    for p in model.parameters():
        if not p.requires_grad or id(p) in skip:
            continue
        kind = "weights" if p.ndim > 1 else "bn_biases" if id(p) in bn_biases else "other"
        buckets[kind].append(p)
    scale = optimizer.bias_lr_scale
    vector_decay = decay if optimizer.bias_decay else 0.0
    groups = [
        {"params": buckets["weights"], "lr": lr, "weight_decay": decay},
        {"params": buckets["bn_biases"], "lr": lr * scale, "weight_decay": vector_decay / scale},
        {"params": buckets["other"], "lr": lr, "weight_decay": vector_decay},
    ]
    return [g for g in groups if g["params"]]


class Optimizers:
    """Several optimizers stepped as one (Muon for the filters, SGD for the rest)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, saved in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(saved)


def make_optimizer(config: TrainConfig, model: nn.Module):
    """SGD (Nesterov or not), Adam, AdamW, or Muon + SGD, over `param_groups`."""
    settings, filters = config.optimizer, []
    if settings.opt == "muon":
        filters = [p for p in model.parameters() if p.ndim == 4 and p.requires_grad]
    groups = param_groups(config, model, skip={id(p) for p in filters})
    if settings.opt in ("sgd", "muon"):
        sgd = torch.optim.SGD(groups, momentum=settings.momentum, nesterov=settings.nesterov)
        if not filters:
            return sgd
        return Optimizers(sgd, Muon(filters, settings.muon_lr, settings.muon_momentum))
    kind = torch.optim.Adam if settings.opt == "adam" else torch.optim.AdamW
    return kind(groups, betas=(settings.momentum, 0.999))
