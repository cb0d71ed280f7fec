"""The parts of a ResNet, each defined once: typed layers, and one class per kind of part.

A network's plan is a list of parts: the stem, each stage's opening layer (res9 and fast
stages) and residual units, and the head. A layer (`Conv`, `BatchNorm`, ...) is a frozen
description: its shapes, its parameter and multiply-add formulas, and `module()`, the torch
module it becomes. A part class (`CifarStem`, `BasicBlock`, `ConvPoolLayer`, `Head`, ...) is a
torch module whose `plan(...)` lays out its named layers as a `Part` without building anything,
cached because a search meets the same parts again and again; `spec.plan` lists those,
`complexity.py` counts them, and `part.module()` builds the class, which holds each layer as the
attribute of its name and wires them up in `forward`. Counting never builds a module:
`Part.params` is exactly the parameters the module will have.

The unit classes keep torchvision's names (`BasicBlock`, ...): "block" in `ResNetSpec` is the
residual unit's type (`block: basic`) and the units per stage (`blocks: [3, 4, 3]`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Iterator
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from budgetnet.errors import UserError

# The whitening stem: a frozen 2x2 patch convolution with a +- pair of filters per eigenvector of
# the 2x2x3 training patches' covariance (set by budgetnet.models.whitening), then GELU.
WHITEN_KERNEL = 2
WHITEN_CHANNELS = 2 * 3 * WHITEN_KERNEL**2


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# ---------------------------------------------------------------------------------------------
# Layers. Maps are square: `size` is the side of the input map, `out_size` that of the output.


class Layer:
    """What every layer offers: `name`, `out_channels` and `out_size` (fields or properties),
    its counts and the module it becomes. `params` counts frozen parameters too (the whitening
    filters, fixed BN scales): a budget counts `model.parameters()`, whatever trains."""

    op: ClassVar[str]  # its label in the per-layer table
    in_table: ClassVar[bool] = True  # in the per-layer table; False: elementwise or a reshape
    name: str  # the attribute of the part that holds it, e.g. "conv1"

    @property
    def params(self) -> int:
        return 0

    @property
    def macs(self) -> int:
        return 0

    @property
    def window(self) -> tuple[int, int]:
        """(kernel, stride) by which it grows the receptive field."""
        return 1, 1

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Per image: (C, H, W), or (features,) once flattened."""
        return self.out_channels, self.out_size, self.out_size

    def module(self, bn_momentum: float) -> nn.Module:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Conv(Layer):
    """No bias unless asked: the BatchNorm after it has one."""

    op: ClassVar[str] = "conv"
    name: str
    in_channels: int
    out_channels: int
    size: int
    kernel: int
    stride: int = 1
    padding: int | None = None  # None: kernel // 2, which keeps the map size for odd kernels
    bias: bool = False

    @property
    def pad(self) -> int:
        return self.kernel // 2 if self.padding is None else self.padding

    @property
    def out_size(self) -> int:
        return _out_size(self.size, self.kernel, self.stride, self.pad)

    @property
    def params(self) -> int:
        return (self.in_channels * self.kernel**2 + self.bias) * self.out_channels

    @property
    def macs(self) -> int:
        return self.in_channels * self.out_channels * self.kernel**2 * self.out_size**2

    @property
    def window(self) -> tuple[int, int]:
        return self.kernel, self.stride

    def module(self, bn_momentum: float) -> nn.Module:
        return nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel, self.stride, self.pad,
            bias=self.bias,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Pool(Layer):
    name: str
    channels: int
    size: int
    kernel: int  # 0: global, one value per channel
    stride: int = 1
    padding: int = 0
    kind: str = "max"  # or "avg" (the spec's pool_type)

    @property
    def op(self) -> str:
        return f"{self.kind}pool"

    @property
    def out_channels(self) -> int:
        return self.channels

    @property
    def out_size(self) -> int:
        if self.kernel == 0:
            return 1
        return _out_size(self.size, self.kernel, self.stride, self.padding)

    @property
    def window(self) -> tuple[int, int]:
        return (self.size, self.size) if self.kernel == 0 else (self.kernel, self.stride)

    def module(self, bn_momentum: float) -> nn.Module:
        windowed, adaptive = {
            "max": (nn.MaxPool2d, nn.AdaptiveMaxPool2d),
            "avg": (nn.AvgPool2d, nn.AdaptiveAvgPool2d),
        }[self.kind]
        return adaptive(1) if self.kernel == 0 else windowed(self.kernel, self.stride, self.padding)


@dataclasses.dataclass(frozen=True)
class Pointwise(Layer):
    """A layer that keeps the shape: `channels` in and out, a `size` map in and out."""

    name: str
    channels: int
    size: int

    @property
    def out_channels(self) -> int:
        return self.channels

    @property
    def out_size(self) -> int:
        return self.size


@dataclasses.dataclass(frozen=True)
class BatchNorm(Pointwise):
    """fixed_scale: airbench's BatchNorm (its eps too), the scale held at 1, only the bias learns."""

    fixed_scale: bool = False

    @property
    def op(self) -> str:
        return "bn_shift" if self.fixed_scale else "bn"

    @property
    def params(self) -> int:
        return 2 * self.channels  # weight and bias; the running statistics are buffers

    def module(self, bn_momentum: float) -> nn.Module:
        eps = 1e-12 if self.fixed_scale else 1e-5
        norm = nn.BatchNorm2d(self.channels, eps=eps, momentum=bn_momentum)
        norm.weight.requires_grad_(not self.fixed_scale)
        return norm


@dataclasses.dataclass(frozen=True)
class ReLU(Pointwise):
    op: ClassVar[str] = "relu"
    in_table: ClassVar[bool] = False

    def module(self, bn_momentum: float) -> nn.Module:
        return nn.ReLU(inplace=True)


@dataclasses.dataclass(frozen=True)
class GELU(Pointwise):
    op: ClassVar[str] = "gelu"
    in_table: ClassVar[bool] = False

    def module(self, bn_momentum: float) -> nn.Module:
        return nn.GELU()


@dataclasses.dataclass(frozen=True)
class Dropout(Pointwise):
    op: ClassVar[str] = "dropout"
    in_table: ClassVar[bool] = False
    p: float = 0.0
    flat: bool = False  # after a Flatten: `channels` features, no map

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.channels,) if self.flat else super().output_shape

    def module(self, bn_momentum: float) -> nn.Module:
        return nn.Dropout(self.p)


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    op: ClassVar[str] = "flatten"
    in_table: ClassVar[bool] = False
    name: str
    channels: int
    size: int
    out_size: ClassVar[int] = 1

    @property
    def out_channels(self) -> int:
        return self.channels * self.size**2

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.out_channels,)

    def module(self, bn_momentum: float) -> nn.Module:
        return nn.Flatten()


@dataclasses.dataclass(frozen=True)
class Linear(Layer):
    op: ClassVar[str] = "linear"
    name: str
    in_channels: int  # features in
    out_channels: int
    bias: bool = True
    out_size: ClassVar[int] = 1

    @property
    def params(self) -> int:
        return (self.in_channels + self.bias) * self.out_channels

    @property
    def macs(self) -> int:
        return self.in_channels * self.out_channels

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.out_channels,)

    def module(self, bn_momentum: float) -> nn.Module:
        return nn.Linear(self.in_channels, self.out_channels, bias=self.bias)


@dataclasses.dataclass(frozen=True)
class Scale(Layer):
    """A fixed factor on the features (airbench's logit scale): a setting, not a parameter."""

    op: ClassVar[str] = "scale"
    in_table: ClassVar[bool] = False
    name: str
    out_channels: int  # features in and out
    factor: float
    out_size: ClassVar[int] = 1

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.out_channels,)

    def module(self, bn_momentum: float) -> nn.Module:
        return FixedScale(self.factor)


class FixedScale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


# ---------------------------------------------------------------------------------------------
# Parts: what the plan lists, and the module classes that build them.


@dataclasses.dataclass(frozen=True, eq=False)
class Part:
    """One entry of a plan (a stem, a stage's opening layer, a residual unit, a head, or a
    unit's projection): the class that builds it and its layers with their shapes.

    Hashed and compared by identity (eq=False): the plans are cached, so equal parts are one
    object, and its counts are computed once however many specs hold it.
    """

    module_type: type[nn.Module]  # BasicBlock, CifarStem, Head, ...
    layers: tuple[Layer, ...]
    shortcut: Part | None = None  # a residual unit's projection; None: the identity, which
    stride: int = 1  # subsamples by the unit's stride
    extra_channels: int = 0  # and appends this many zero channels

    @property
    def out_channels(self) -> int:
        return self.layers[-1].out_channels

    @property
    def out_size(self) -> int:
        return self.layers[-1].out_size

    @functools.cached_property
    def params(self) -> int:
        return sum(layer.params for _, layer in self.named_layers())

    @functools.cached_property
    def macs(self) -> int:
        return sum(layer.macs for _, layer in self.named_layers())

    def named_layers(self) -> Iterator[tuple[str, Layer]]:
        """(path inside the part's module, layer): the main path, then the projection's."""
        for layer in self.layers:
            yield layer.name, layer
        if self.shortcut is not None:
            for path, layer in self.shortcut.named_layers():
                yield f"shortcut.{path}", layer

    def module(self, bn_momentum: float) -> nn.Module:
        return self.module_type(self, bn_momentum)


class SequentialPart(nn.Sequential):
    """Its layers in order, each the child of its name (`stem.conv`, `head.fc`, ...)."""

    def __init__(self, part: Part, bn_momentum: float) -> None:
        super().__init__(OrderedDict((x.name, x.module(bn_momentum)) for x in part.layers))


class CifarStem(SequentialPart):
    """A 3x3 conv, BN and ReLU at full resolution; a bare conv before pre-activation units,
    which normalise their input themselves."""

    @classmethod
    @functools.cache
    def plan(cls, channels: int, size: int, pre_activation: bool) -> Part:
        conv = Conv("conv", 3, channels, size, 3)
        if pre_activation:
            return Part(cls, (conv,))
        s = conv.out_size
        return Part(cls, (conv, BatchNorm("bn", channels, s), ReLU("relu", channels, s)))


class ImagenetStem(SequentialPart):
    """torchvision's: a 7x7 conv by 2, BN, ReLU, a 3x3 max-pool by 2."""

    @classmethod
    @functools.cache
    def plan(cls, channels: int, size: int, pre_activation: bool) -> Part:
        conv = Conv("conv", 3, channels, size, 7, 2)
        s = conv.out_size
        return Part(cls, (
            conv, BatchNorm("bn", channels, s), ReLU("relu", channels, s),
            Pool("maxpool", channels, s, 3, 2, 1),
        ))  # fmt: skip


class WhiteningStem(SequentialPart):
    """airbench's first layer: 2x2 patches without padding (a 32 px image becomes a 31 px map)
    whitened by frozen filters that `budgetnet.models.whitening` sets from the training images;
    only the conv's bias trains. Then GELU."""

    @classmethod
    @functools.cache
    def plan(cls, channels: int, size: int, pre_activation: bool) -> Part:
        conv = Conv("conv", 3, WHITEN_CHANNELS, size, WHITEN_KERNEL, padding=0, bias=True)
        return Part(cls, (conv, GELU("act", WHITEN_CHANNELS, conv.out_size)))

    def __init__(self, part: Part, bn_momentum: float) -> None:
        super().__init__(part, bn_momentum)
        self.conv.weight.requires_grad_(False)


class Head(SequentialPart):
    """Pool (0 = global), flatten, dropout, the classifier, and a fixed factor on the logits
    unless it is 1; BN-ReLU first after pre-activation units, whose output is not normalised."""

    @classmethod
    @functools.cache
    def plan(
        cls, channels: int, size: int, pool: int, pool_type: str, dropout: float,
        num_classes: int, bias: bool, scale: float, pre_activation: bool,
    ) -> Part:  # fmt: skip
        layers = ()
        if pre_activation:
            layers = (BatchNorm("bn", channels, size), ReLU("relu", channels, size))
        if pool and size % pool:
            raise UserError(f"pool {pool} does not divide the final {size}x{size} map (0 = global)")
        pooled = Pool("pool", channels, size, pool, pool, kind=pool_type)
        flat = Flatten("flatten", channels, pooled.out_size)
        layers += (
            pooled, flat, Dropout("drop", flat.out_channels, 1, dropout, flat=True),
            Linear("fc", flat.out_channels, num_classes, bias),
        )  # fmt: skip
        if scale != 1:
            layers += (Scale("scale", num_classes, scale),)
        return Part(cls, layers)


class ConvPoolLayer(SequentialPart):
    """The layer that opens a res9 or fast stage (Page's ResNet-9 layer): conv, max-pool by the
    stride, BN, activation; its units then keep the shape."""

    @classmethod
    @functools.cache
    def plan(
        cls, cin: int, width: int, kernel: int, stride: int, size: int,
        fixed_scale: bool, activation: type[Pointwise],
    ) -> Part:  # fmt: skip
        layers = (Conv("conv", cin, width, size, kernel),)
        if stride > 1:
            layers += (Pool("pool", width, size, stride, stride),)
        s = layers[-1].out_size
        if s < 1:
            raise UserError(f"a {size}x{size} map is too small for a max-pool of {stride}")
        norm = BatchNorm("bn", width, s, fixed_scale)
        return Part(cls, layers + (norm, activation(activation.op, width, s)))


class Projection(SequentialPart):
    """The shortcut of a unit that changes shape: a 1x1 conv with the unit's stride, then BN;
    before pre-activation units a bare conv (He et al. 2016b)."""

    @classmethod
    @functools.cache
    def plan(
        cls, cin: int, cout: int, stride: int, size: int, style: str, with_bn: bool
    ) -> Part | None:
        """None where the shapes agree, or for an identity shortcut ("identity" style)."""
        if cin == cout and stride == 1:
            return None
        if style == "identity":
            if cout < cin:
                raise UserError(
                    f"an identity shortcut can only add channels, not go from {cin} to {cout}; "
                    "use --shortcut projection"
                )
            return None
        conv = Conv("conv", cin, cout, size, 1, stride)
        return Part(cls, (conv, BatchNorm("bn", cout, conv.out_size)) if with_bn else (conv,))


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


class ResidualUnit(nn.Module):
    """A unit: its `layout` (the main path from `cin` channels of a `size` map) as attributes
    of the layers' names, and a shortcut; each subclass wires them up in `forward`."""

    pre_activation: ClassVar[bool] = False  # normalises its input: a bare stem, BN in the head

    @staticmethod
    def layout(
        cin: int, width: int, kernel: int, stride: int, size: int, dropout: float, expansion: int
    ) -> tuple[Layer, ...]:
        raise NotImplementedError

    @classmethod
    def opening(cls, cin: int, width: int, kernel: int, stride: int, size: int) -> Part | None:
        """The part that opens each stage before its units, if any."""
        return None

    @classmethod
    @functools.cache
    def plan(
        cls, cin: int, width: int, kernel: int, stride: int, size: int,
        shortcut: str, dropout: float, expansion: int,
    ) -> Part:  # fmt: skip
        layers = cls.layout(cin, width, kernel, stride, size, dropout, expansion)
        cout = layers[-1].out_channels
        projection = Projection.plan(cin, cout, stride, size, shortcut, not cls.pre_activation)
        return Part(cls, layers, projection, stride, cout - cin)

    def __init__(self, part: Part, bn_momentum: float) -> None:
        super().__init__()
        for layer in part.layers:
            self.add_module(layer.name, layer.module(bn_momentum))
        if part.shortcut is not None:
            self.shortcut = part.shortcut.module(bn_momentum)
        elif part.stride > 1 or part.extra_channels:
            self.shortcut = ZeroPadShortcut(part.stride, part.extra_channels)
        else:
            self.shortcut = nn.Identity()


class BasicBlock(ResidualUnit):
    """relu(x + BN(conv(dropout(relu(BN(conv(x))))))), the stride on the first conv."""

    @staticmethod
    def layout(cin, width, kernel, stride, size, dropout, expansion):
        conv1 = Conv("conv1", cin, width, size, kernel, stride)
        s = conv1.out_size
        return (
            conv1, BatchNorm("bn1", width, s), Dropout("drop", width, s, dropout),
            Conv("conv2", width, width, s, kernel), BatchNorm("bn2", width, s),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(F.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(ResidualUnit):
    """torchvision's ResNet v1.5 unit: 1x1 down to `width`, kernel x kernel with the stride,
    1x1 up to width * expansion."""

    @staticmethod
    def layout(cin, width, kernel, stride, size, dropout, expansion):
        conv2 = Conv("conv2", width, width, size, kernel, stride)
        s, cout = conv2.out_size, width * expansion
        return (
            Conv("conv1", cin, width, size, 1), BatchNorm("bn1", width, size),
            conv2, BatchNorm("bn2", width, s), Dropout("drop", width, s, dropout),
            Conv("conv3", width, cout, s, 1), BatchNorm("bn3", cout, s),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.drop(F.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(ResidualUnit):
    """He et al. (2016b): BN-ReLU before each conv, nothing after the addition."""

    pre_activation = True

    @staticmethod
    def layout(cin, width, kernel, stride, size, dropout, expansion):
        conv1 = Conv("conv1", cin, width, size, kernel, stride)
        s = conv1.out_size
        return (
            BatchNorm("bn1", cin, size), conv1,
            BatchNorm("bn2", width, s), Dropout("drop", width, s, dropout),
            Conv("conv2", width, width, s, kernel),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        # A projection sees the normalised input, as in the paper; an identity passes x itself.
        shortcut = self.shortcut(pre if isinstance(self.shortcut, Projection) else x)
        out = self.drop(F.relu(self.bn2(self.conv1(pre))))
        return self.conv2(out) + shortcut


class Res9Unit(BasicBlock):
    """Page's ResNet-9 residual: the basic unit's layers as x + (conv-BN-ReLU) twice, no ReLU
    after the addition; each stage opens with a conv-pool layer, so the units keep the shape."""

    @classmethod
    def opening(cls, cin: int, width: int, kernel: int, stride: int, size: int) -> Part:
        return ConvPoolLayer.plan(cin, width, kernel, stride, size, False, ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(F.relu(self.bn1(self.conv1(x))))
        return self.shortcut(x) + F.relu(self.bn2(self.conv2(out)))


class FastUnit(ResidualUnit):
    """The fast stages' unit: x + GELU(BN(conv(x))), BN with a fixed scale (airbench's), after
    a conv-pool layer that opens the stage likewise."""

    @staticmethod
    def layout(cin, width, kernel, stride, size, dropout, expansion):
        conv = Conv("conv", cin, width, size, kernel, stride)
        s = conv.out_size
        return conv, BatchNorm("bn", width, s, fixed_scale=True), GELU("act", width, s)

    @classmethod
    def opening(cls, cin: int, width: int, kernel: int, stride: int, size: int) -> Part:
        return ConvPoolLayer.plan(cin, width, kernel, stride, size, True, GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.bn(self.conv(x)))


# The spec's names for them (its `block` and `stem` fields), in the order the help lists them.
UNIT_TYPES: dict[str, type[ResidualUnit]] = {
    "basic": BasicBlock, "bottleneck": Bottleneck, "preact": PreActBlock, "res9": Res9Unit,
    "fast": FastUnit,
}  # fmt: skip
STEM_TYPES: dict[str, type[SequentialPart]] = {
    "cifar": CifarStem, "imagenet": ImagenetStem, "whiten": WhiteningStem,
}  # fmt: skip
