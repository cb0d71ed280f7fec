"""Stochastic weight averaging (Izmailov et al. 2018), with torch.optim.swa_utils.

From epoch round(swa_start * epochs) on, the learning rate holds at swa_lr (the schedule's
business, budgetnet.training.schedule) and the weights after every epoch join an equal-weight
average. BatchNorm statistics of averaged weights are not the average of the statistics, so at
the end they are recomputed over the training images (`update_bn`), and the average is
validated and released like any other model.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from budgetnet.training.config import TrainConfig
from budgetnet.training.schedule import swa_start_epoch


class WeightAverage:
    """The running average of the weights after each epoch from `swa_start_epoch` on."""

    def __init__(self, model: nn.Module, config: TrainConfig) -> None:
        self.average = AveragedModel(model)
        self.start = swa_start_epoch(config)

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        if epoch >= self.start:
            self.average.update_parameters(model)

    @property
    def count(self) -> int:
        return int(self.average.n_averaged.item())

    def finish(self, inputs: Iterator[torch.Tensor], device: torch.device) -> nn.Module:
        """The averaged network with BatchNorm statistics recomputed over `inputs` (normalised
        training batches), in eval mode."""
        update_bn(inputs, self.average, device=device)
        return self.average.module.eval()

    def state_dict(self) -> dict:
        return self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state)
