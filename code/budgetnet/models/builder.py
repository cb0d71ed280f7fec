"""The builder: `build(spec)` makes each part of the spec's plan with the class that laid it out
(`budgetnet.models.blocks`), so parameter counts match the plan by construction. No training
code lives here: inference calls `build(ResNetSpec.from_dict(d))` on the spec a release stores.
"""

from __future__ import annotations

import torch
from torch import nn

from budgetnet.models.spec import ResNetSpec


class ResNet(nn.Module):
    """stem -> stages -> head; module paths are those of `spec.plan.named_parts()`."""

    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        self.spec = spec
        plan, momentum = spec.plan, spec.bn_momentum
        self.stem = plan.stem.module(momentum)
        self.stages = nn.Sequential(
            *(nn.Sequential(*(part.module(momentum) for part in s)) for s in plan.stages)
        )
        self.head = plan.head.module(momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def build(spec: ResNetSpec) -> ResNet:
    """The network `spec` describes, initialised as its family is.

    Convs get Kaiming-normal weights (fan_out, ReLU gain), as torchvision's ResNets; in "fast"
    networks they keep PyTorch's default and the first in_channels filters are set to the
    identity (Dirac), as in airbench. BN starts at weight 1, bias 0 and the classifier keeps
    PyTorch's default (both are already what the constructors give). The whitening stem's
    filters are frozen as built; `budgetnet.models.whitening` sets them from the training images.
    """
    model = ResNet(spec)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if spec.block == "fast":
                nn.init.dirac_(m.weight.data[: m.in_channels])
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model
