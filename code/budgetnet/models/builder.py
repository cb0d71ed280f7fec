"""The builder: `build(spec)` makes the modules straight from the spec's layer plan, so parameter
counts match the plan by construction. No training code lives here: inference calls
`build(ResNetSpec.from_dict(d))` on the spec a release stores.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from budgetnet.models.spec import Block, Layer, ResNetSpec

_POOLS = {
    "avgpool": (nn.AvgPool2d, nn.AdaptiveAvgPool2d),
    "maxpool": (nn.MaxPool2d, nn.AdaptiveMaxPool2d),
}


class Scale(nn.Module):
    """Multiply by a fixed factor (airbench's logit scale): a setting, not a parameter."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


def _make_layer(layer: Layer, bn_momentum: float) -> nn.Module:
    if layer.op == "conv":
        # Without a bias unless the plan says so: the BN next to it has one.
        return nn.Conv2d(
            layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.padding,
            bias=layer.bias,
        )  # fmt: skip
    if layer.op in ("bn", "bn_shift"):
        # bn_shift: airbench's BatchNorm (its eps too), scale fixed at 1, only the bias learns
        eps = 1e-12 if layer.op == "bn_shift" else 1e-5
        norm = nn.BatchNorm2d(layer.out_channels, eps=eps, momentum=bn_momentum)
        norm.weight.requires_grad_(layer.op == "bn")
        return norm
    if layer.op == "relu":
        return nn.ReLU(inplace=True)
    if layer.op == "gelu":
        return nn.GELU()
    if layer.op == "dropout":
        return nn.Dropout(layer.p)
    if layer.op == "flatten":
        return nn.Flatten()
    if layer.op == "linear":
        return nn.Linear(layer.in_channels, layer.out_channels, bias=layer.bias)
    if layer.op == "scale":
        return Scale(layer.p)
    windowed, adaptive = _POOLS[layer.op]
    return adaptive(1) if layer.kernel == 0 else windowed(layer.kernel, layer.stride, layer.padding)


def _sequential(layers: tuple[Layer, ...], bn_momentum: float) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict((layer.name, _make_layer(layer, bn_momentum)) for layer in layers)
    )


class ZeroPadShortcut(nn.Module):
    """He et al.'s option A: subsample by the stride and pad the new channels with zeros."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride, self.extra_channels = stride, extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


class Residual(nn.Module):
    """A residual unit: the plan's layers as named children; each subclass wires them up."""

    def __init__(self, block: Block, bn_momentum: float) -> None:
        super().__init__()
        for layer in block.layers:
            self.add_module(layer.name, _make_layer(layer, bn_momentum))
        if block.shortcut:
            self.shortcut = _sequential(block.shortcut, bn_momentum)
        elif block.stride > 1 or block.extra_channels:
            self.shortcut = ZeroPadShortcut(block.stride, block.extra_channels)
        else:
            self.shortcut = nn.Identity()


class BasicBlock(Residual):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(F.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(Residual):
    """torchvision's ResNet v1.5 unit: the stride sits on the middle (kernel x kernel) conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.drop(F.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(Residual):
    """He et al. (2016b): BN-ReLU before each conv, nothing after the addition."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        # A projection sees the normalised input, as in the paper; an identity passes x itself.
        shortcut = self.shortcut(pre if isinstance(self.shortcut, nn.Sequential) else x)
        out = self.drop(F.relu(self.bn2(self.conv1(pre))))
        return self.conv2(out) + shortcut


class Res9Unit(Residual):
    """Page's ResNet-9 residual: x + (conv-BN-ReLU) twice, no ReLU after the addition."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(F.relu(self.bn1(self.conv1(x))))
        return self.shortcut(x) + F.relu(self.bn2(self.conv2(out)))


class FastUnit(Residual):
    """The fast stages' residual unit: x + GELU(BN(conv(x))), BN with a fixed scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.bn(self.conv(x)))


_UNITS = {
    "basic": BasicBlock, "bottleneck": Bottleneck, "preact": PreActBlock, "res9": Res9Unit,
    "fast": FastUnit,
}  # fmt: skip


def _make_block(block: Block, bn_momentum: float) -> nn.Module:
    if block.kind == "sequential":
        return _sequential(block.layers, bn_momentum)
    return _UNITS[block.kind](block, bn_momentum)


class ResNet(nn.Module):
    """stem -> stages -> head; module paths are those of `spec.plan.named_blocks()`."""

    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        self.spec = spec
        plan, momentum = spec.plan, spec.bn_momentum
        self.stem = _make_block(plan.stem, momentum)
        self.stages = nn.Sequential(
            *(nn.Sequential(*(_make_block(b, momentum) for b in s)) for s in plan.stages)
        )
        self.head = _make_block(plan.head, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def build(spec: ResNetSpec) -> ResNet:
    """The network `spec` describes, initialised as its family is.

    Convs get Kaiming-normal weights (fan_out, ReLU gain), as torchvision's ResNets; in "fast"
    networks they keep PyTorch's default and the first in_channels filters are set to the
    identity (Dirac), as in airbench. BN starts at weight 1, bias 0 and the classifier keeps
    PyTorch's default (both are already what the constructors give). The whitening stem's
    weights are frozen: `budgetnet.models.whitening` sets them from the training images.
    """
    model = ResNet(spec)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if spec.block == "fast":
                nn.init.dirac_(m.weight.data[: m.in_channels])
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if spec.stem == "whiten":  # whitening.py sets these weights
        model.stem.conv.weight.requires_grad_(False)
    return model
