"""ResNets described by one spec: the spec, its layer plan, the builder and the named presets.

A `ResNetSpec` says what the network is (blocks B, channels C, kernel F, pool P, ...). Its
`plan` lists every layer with its shapes; `build(spec)` turns the plan into modules and
`budgetnet.models.complexity` counts parameters and FLOPs from the same plan, so the two cannot drift.
No training code lives here: a checkpoint stores `spec.to_dict()` and inference calls
`build(ResNetSpec.from_dict(d))`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from budgetnet.errors import UserError, brief, shorten

BLOCK_TYPES = ("basic", "bottleneck", "preact", "res9", "fast")
STEMS = ("cifar", "imagenet", "whiten")
# The whitening stem: a frozen 2x2 patch convolution with a +- pair of filters per eigenvector of
# the 2x2x3 training patches' covariance (set by budgetnet.models.whitening), then GELU.
WHITEN_KERNEL = 2
WHITEN_CHANNELS = 2 * 3 * WHITEN_KERNEL**2
SHORTCUTS = ("projection", "identity")
MAX_CHANNELS = 8192  # per stage (and classes); with MAX_BLOCKS, a cap for specs read from files
MAX_BLOCKS = 256  # units per stage, and stages
POOL_TYPES = ("avg", "max")


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """Everything that decides a network's layers; validated on construction.

    blocks[i] and channels[i] describe stage i. For "bottleneck" the channels are the inner
    widths and a stage outputs channels[i] * expansion; for "res9" a stage is the ResNet-9
    layer (conv, max-pool by its stride, BN, ReLU) followed by blocks[i] residual units (0 is
    allowed). "fast" is the airbench layout made residual: a stage is conv, max-pool by its
    stride, BN, GELU, then blocks[i] units x + GELU(BN(conv(x))); its BatchNorms have a fixed
    scale of 1 and a learned bias, and its convolutions start as identities (Dirac) where the
    shapes allow. `pool` is the head's pooling window (0 = global); the classifier sees
    channels * (final_map / pool)**2 features, and its logits are multiplied by `logit_scale`.
    """

    blocks: tuple[int, ...]
    channels: tuple[int, ...]
    kernel: int = 3
    block: str = "basic"
    stem: str = "cifar"
    stem_channels: int | None = None  # None: channels[0]
    shortcut: str = "projection"  # where shape changes: 1x1 conv (+BN), or identity zero-padded
    pool: int = 0
    pool_type: str = "avg"
    strides: tuple[int, ...] | None = None  # None: 1 then 2s ("res9": all 2s)
    expansion: int = 4  # bottleneck only
    dropout: float = 0.0  # inside every residual unit, between its convolutions
    head_dropout: float = 0.0  # before the classifier
    num_classes: int = 10
    input_size: int = 32
    bn_momentum: float = 0.1  # BatchNorm running statistics: weight of each new batch (PyTorch's)
    head_bias: bool = True  # the classifier's bias
    logit_scale: float = 1.0  # fixed factor on the logits (airbench: 1/9)

    def __post_init__(self) -> None:
        for name in ("blocks", "channels", "strides"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _int_tuple(name, value))
        if not self.blocks or len(self.blocks) != len(self.channels):
            raise UserError(
                f"blocks {list(self.blocks)} and channels {list(self.channels)} must be "
                "non-empty and of the same length (one entry per stage)"
            )
        if self.strides is not None and len(self.strides) != len(self.blocks):
            raise UserError(f"strides {list(self.strides)} needs one entry per stage")
        for name, choices in [
            ("block", BLOCK_TYPES), ("stem", STEMS), ("shortcut", SHORTCUTS),
            ("pool_type", POOL_TYPES),
        ]:  # fmt: skip
            if getattr(self, name) not in choices:
                raise UserError(
                    f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}"
                )
        min_blocks = 0 if self.block == "res9" else 1  # a ResNet-9 layer may have no units
        for name, values, minimum in [
            ("blocks", self.blocks, min_blocks), ("channels", self.channels, 1),
            ("strides", self.stage_strides, 1),
        ]:  # fmt: skip
            if not _ints_at_least(values, minimum):
                raise UserError(f"{name} must be integers >= {minimum}, got {list(values)}")
        scalars = [
            ("kernel", 1),
            ("pool", 0),
            ("expansion", 1),
            ("num_classes", 1),
            ("input_size", 1),
        ]
        if self.stem_channels is not None:
            scalars.append(("stem_channels", 1))
        for name, minimum in scalars:
            if not _ints_at_least((value := getattr(self, name),), minimum):
                raise UserError(f"{name} must be an integer >= {minimum}, got {brief(value)}")
        # Far beyond any network here; a spec read from a file cannot ask for terabytes.
        for name, values, cap in [
            ("blocks", self.blocks, MAX_BLOCKS), ("channels", self.channels, MAX_CHANNELS),
            ("stages", (len(self.blocks),), MAX_BLOCKS), ("kernel", (self.kernel,), 31),
            ("num_classes", (self.num_classes,), MAX_CHANNELS),
            ("input_size", (self.input_size,), 1024), ("expansion", (self.expansion,), 16),
            ("stem_channels", (self.stem_channels or 1,), MAX_CHANNELS),
            ("strides", self.stage_strides, 64), ("pool", (self.pool,), 1024),
        ]:  # fmt: skip
            if max(values) > cap:
                raise UserError(f"{name} {list(values)} exceeds the limit of {cap}")
        if self.stem == "whiten" and self.stem_channels not in (None, WHITEN_CHANNELS):
            raise UserError(
                f"the whitening stem has 2*3*{WHITEN_KERNEL}^2 = {WHITEN_CHANNELS} channels, "
                f"got stem_channels {self.stem_channels}"
            )
        if type(self.head_bias) is not bool:
            raise UserError(f"head_bias must be true or false, got {brief(self.head_bias)}")
        for name, low, high in [("bn_momentum", 0.0, 1.0), ("logit_scale", 0.0, 1e6)]:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not low < value <= high
            ):
                raise UserError(
                    f"{name} must be a number in ({low:g}, {high:g}], got {brief(value)}"
                )
        if self.kernel % 2 == 0:
            raise UserError(f"kernel must be odd so padding keeps the map size, got {self.kernel}")
        for name in ("dropout", "head_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise UserError(f"{name} must be a number in [0, 1), got {brief(value)}")
        self.plan  # noqa: B018 - laying out the layers checks map sizes, the pool and shortcuts

    @property
    def stage_strides(self) -> tuple[int, ...]:
        if self.strides is not None:
            return self.strides
        first = 2 if self.block in ("res9", "fast") else 1
        return (first,) + (2,) * (len(self.blocks) - 1)

    @functools.cached_property
    def plan(self) -> Plan:
        """Every layer with its shapes, laid out once per spec (stored beside the frozen fields)."""
        return _plan(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able values (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResNetSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(
                f"unknown model spec keys {shorten(str(unknown))}; known: {sorted(known)}"
            )
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise UserError(f"model spec is missing {missing}")
        return cls(**d)


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise UserError(f"{name} must be a list of integers, got {brief(value)}")
    return tuple(value)


def _ints_at_least(values: tuple, minimum: int) -> bool:
    return all(type(v) is int and v >= minimum for v in values)  # `type is`: no bools


# ---------------------------------------------------------------------------------------------
# The layer plan: what the builder builds and what complexity.py counts.


class Layer(NamedTuple):
    """One leaf module. Maps are square; `out_size` is the side of the output map."""

    name: str  # attribute name inside its block, e.g. "conv1"
    # "conv" | "bn" | "bn_shift" (scale fixed at 1, learned bias) | "relu" | "gelu" | "maxpool"
    # | "avgpool" | "flatten" | "dropout" | "linear" | "scale" (a fixed factor)
    op: str
    in_channels: int  # for "linear": input features
    out_channels: int
    out_size: int
    kernel: int = 1  # pools: 0 = global
    stride: int = 1
    padding: int = 0
    p: float = 0.0  # dropout probability; "scale": the factor
    bias: bool = False  # "conv" and "linear"


@dataclasses.dataclass(frozen=True, eq=False)
class Block:
    """A module made of layers: "sequential" runs them in order, the others are residual units.

    Hashed and compared by identity (eq=False): the functions that lay blocks out are cached, so
    equal blocks are one object, and complexity.py can cache per block without hashing layers.
    """

    kind: str  # "sequential" | "basic" | "bottleneck" | "preact" | "res9" | "fast"
    layers: tuple[Layer, ...]
    shortcut: tuple[Layer, ...] = ()  # projection layers; empty: identity, zero-padded if needed
    stride: int = 1
    extra_channels: int = 0  # channels the identity shortcut pads with zeros

    @property
    def out_channels(self) -> int:
        return self.layers[-1].out_channels

    @property
    def out_size(self) -> int:
        return self.layers[-1].out_size


class Plan(NamedTuple):
    stem: Block
    stages: tuple[tuple[Block, ...], ...]
    head: Block

    def named_blocks(self) -> Iterator[tuple[str, Block]]:
        """(module path, block) in forward order; the paths are those of `build(spec)`."""
        yield "stem", self.stem
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                yield f"stages.{i}.{j}", block
        yield "head", self.head


def _out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _conv(name: str, cin: int, cout: int, kernel: int, stride: int, size: int) -> Layer:
    pad = kernel // 2  # "same" padding for odd kernels
    return Layer(name, "conv", cin, cout, _out_size(size, kernel, stride, pad), kernel, stride, pad)


def _bn(name: str, channels: int, size: int, op: str = "bn") -> Layer:
    return Layer(name, op, channels, channels, size)


def _relu(name: str, channels: int, size: int, op: str = "relu") -> Layer:
    return Layer(name, op, channels, channels, size)


# BatchNorm and activation of each unit type: the fast units' BN has a fixed scale.
_NORM_ACT = {"fast": ("bn_shift", "gelu")}
_DEFAULT_NORM_ACT = ("bn", "relu")


def _dropout(name: str, channels: int, size: int, p: float) -> Layer:
    return Layer(name, "dropout", channels, channels, size, p=p)


def _pool(name: str, op: str, channels: int, size: int, kernel: int, stride: int, pad: int = 0):
    out = 1 if kernel == 0 else _out_size(size, kernel, stride, pad)
    return Layer(name, op, channels, channels, out, kernel, stride, pad)


def _shortcut(cin: int, cout: int, stride: int, size: int, style: str, with_bn: bool) -> tuple:
    """Projection layers, or () for an identity (subsampled by `stride`, zero-padded to cout)."""
    if cin == cout and stride == 1:
        return ()
    if style == "identity":
        if cout < cin:
            raise UserError(
                f"an identity shortcut can only add channels, not go from {cin} to {cout}; "
                "use --shortcut projection"
            )
        return ()
    conv = _conv("conv", cin, cout, 1, stride, size)
    return (conv, _bn("bn", cout, conv.out_size)) if with_bn else (conv,)


@functools.cache
def _unit(
    kind: str, cin: int, width: int, kernel: int, stride: int, size: int,
    shortcut: str, dropout: float, expansion: int,
) -> Block:  # fmt: skip
    """One residual unit taking `cin` channels of a `size` map; cached: search repeats them."""
    if kind == "bottleneck":
        c1 = _conv("conv1", cin, width, 1, 1, size)
        c2 = _conv("conv2", width, width, kernel, stride, size)
        s = c2.out_size
        c3 = _conv("conv3", width, width * expansion, 1, 1, s)
        layers = (
            c1, _bn("bn1", width, size),
            c2, _bn("bn2", width, s), _dropout("drop", width, s, dropout),
            c3, _bn("bn3", c3.out_channels, s),
        )  # fmt: skip
    elif kind == "preact":
        c1 = _conv("conv1", cin, width, kernel, stride, size)
        s = c1.out_size
        layers = (
            _bn("bn1", cin, size), c1,
            _bn("bn2", width, s), _dropout("drop", width, s, dropout),
            _conv("conv2", width, width, kernel, 1, s),
        )  # fmt: skip
    elif kind == "fast":  # x + GELU(BN(conv(x))); like res9, its units never change shape
        c1 = _conv("conv", cin, width, kernel, stride, size)
        s = c1.out_size
        layers = (c1, _bn("bn", width, s, "bn_shift"), _relu("act", width, s, "gelu"))
    else:  # "basic", and "res9" (whose units never change shape)
        c1 = _conv("conv1", cin, width, kernel, stride, size)
        s = c1.out_size
        layers = (
            c1, _bn("bn1", width, s), _dropout("drop", width, s, dropout),
            _conv("conv2", width, width, kernel, 1, s), _bn("bn2", width, s),
        )  # fmt: skip
    cout = layers[-1].out_channels
    # He et al. (2016b): a pre-activation projection is a bare 1x1 conv
    projection = _shortcut(cin, cout, stride, size, shortcut, with_bn=kind != "preact")
    return Block(kind, layers, projection, stride, cout - cin)


@functools.cache
def _stem(stem: str, block: str, channels: int, size: int) -> Block:
    if stem == "whiten":  # 2x2 patches, no padding: a 32 px image becomes a 31 px map
        conv = Layer(
            "conv", "conv", 3, WHITEN_CHANNELS, _out_size(size, WHITEN_KERNEL, 1, 0),
            WHITEN_KERNEL, bias=True,
        )  # fmt: skip
        return Block("sequential", (conv, _relu("act", WHITEN_CHANNELS, conv.out_size, "gelu")))
    if stem == "imagenet":
        conv = _conv("conv", 3, channels, 7, 2, size)
        s = conv.out_size
        layers = (conv, _bn("bn", channels, s), _relu("relu", channels, s))
        return Block("sequential", layers + (_pool("maxpool", "maxpool", channels, s, 3, 2, 1),))
    conv = _conv("conv", 3, channels, 3, 1, size)
    if block == "preact":  # every unit normalises its input first, so the stem is a bare conv
        return Block("sequential", (conv,))
    s = conv.out_size
    return Block("sequential", (conv, _bn("bn", channels, s), _relu("relu", channels, s)))


def _pool_layer(block: str, cin: int, width: int, kernel: int, stride: int, size: int) -> Block:
    """The layer that opens a res9 or fast stage (Page's ResNet-9 layer): conv, max-pool by the
    stride, BN, activation (ReLU; GELU after a fixed-scale BN in fast stages)."""
    norm, act = _NORM_ACT.get(block, _DEFAULT_NORM_ACT)
    layers = (_conv("conv", cin, width, kernel, 1, size),)
    if stride > 1:
        layers += (_pool("pool", "maxpool", width, size, stride, stride),)
    s = layers[-1].out_size
    if s < 1:
        raise UserError(f"a {size}x{size} map is too small for a max-pool of {stride}")
    return Block("sequential", layers + (_bn("bn", width, s, norm), _relu(act, width, s, act)))


@functools.cache
def _head(
    block: str, channels: int, size: int, pool: int, pool_type: str, dropout: float,
    num_classes: int, bias: bool = True, scale: float = 1.0,
) -> Block:  # fmt: skip
    layers = ()
    if block == "preact":  # the last unit's output has not been normalised yet
        layers = (_bn("bn", channels, size), _relu("relu", channels, size))
    if pool and size % pool:
        raise UserError(f"pool {pool} does not divide the final {size}x{size} map (0 = global)")
    pooled = _pool("pool", f"{pool_type}pool", channels, size, pool, pool)
    features = channels * pooled.out_size**2
    layers += (
        pooled,
        Layer("flatten", "flatten", channels, features, 1),
        _dropout("drop", features, 1, dropout),
        Layer("fc", "linear", features, num_classes, 1, bias=bias),
    )  # fmt: skip
    if scale != 1:
        layers += (Layer("scale", "scale", num_classes, num_classes, 1, p=scale),)
    return Block("sequential", layers)


@functools.cache
def _stage(
    block: str, cin: int, width: int, n_units: int, kernel: int, stride: int, size: int,
    shortcut: str, dropout: float, expansion: int,
) -> tuple[Block, ...]:  # fmt: skip
    stage = []
    if block in ("res9", "fast"):  # the layer downsamples, so its units keep the shape
        stage.append(_pool_layer(block, cin, width, kernel, stride, size))
        cin, size, stride = width, stage[0].out_size, 1
    for i in range(n_units):
        unit_stride = stride if i == 0 else 1  # the first unit downsamples
        unit = _unit(block, cin, width, kernel, unit_stride, size, shortcut, dropout, expansion)
        stage.append(unit)
        cin, size = unit.out_channels, unit.out_size
    return tuple(stage)


def _plan(spec: ResNetSpec) -> Plan:
    channels = spec.stem_channels or spec.channels[0]
    stem = _stem(spec.stem, spec.block, channels, spec.input_size)
    channels, size, stages = stem.out_channels, stem.out_size, []
    for n_units, width, stride in zip(spec.blocks, spec.channels, spec.stage_strides, strict=True):
        stage = _stage(
            spec.block, channels, width, n_units, spec.kernel, stride, size,
            spec.shortcut, spec.dropout, spec.expansion,
        )  # fmt: skip
        stages.append(stage)
        channels, size = stage[-1].out_channels, stage[-1].out_size
    head = _head(
        spec.block, channels, size, spec.pool, spec.pool_type, spec.head_dropout,
        spec.num_classes, spec.head_bias, spec.logit_scale,
    )  # fmt: skip
    return Plan(stem, tuple(stages), head)


# ---------------------------------------------------------------------------------------------
# The builder: modules made straight from the plan, so parameter counts match it by construction.

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


def _make_layer(layer: Layer, bn_momentum: float = 0.1) -> nn.Module:
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


def _sequential(layers: tuple[Layer, ...], bn_momentum: float = 0.1) -> nn.Sequential:
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

    def __init__(self, block: Block, bn_momentum: float = 0.1) -> None:
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


def _make_block(block: Block, bn_momentum: float = 0.1) -> nn.Module:
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


# ---------------------------------------------------------------------------------------------
# The zoo: the published systems this project grew from, by name (timm style).


class Preset(NamedTuple):
    spec: ResNetSpec
    description: str
    source: str


def _he_cifar(depth: int) -> Preset:
    n = (depth - 2) // 6  # 6n + 2 layers: 3 stages of n two-conv units, the stem and the classifier
    return Preset(
        ResNetSpec((n,) * 3, (16, 32, 64), shortcut="identity"),
        f"He et al.'s CIFAR ResNet-{depth}: 3 x {n} basic units, 16/32/64, zero-padded shortcuts",
        "He et al. 2016, Deep Residual Learning, sec. 4.2",
    )


def _imagenet_bottleneck(blocks: tuple[int, ...], depth: int) -> Preset:
    return Preset(
        ResNetSpec(
            blocks, (64, 128, 256, 512), block="bottleneck", stem="imagenet", input_size=224
        ),
        f"ResNet-{depth}: bottleneck [{','.join(map(str, blocks))}], 64-512 (x4), 7x7/2 stem + max-pool",
        f"torchvision resnet{depth} (v1.5)",
    )


def _fast(blocks: tuple[int, ...], channels: tuple[int, ...]) -> ResNetSpec:
    """airbench's network with residual units: BN momentum 0.4 (airbench's 0.6 in its own
    convention), a bias-free classifier and logits scaled by 1/9."""
    return ResNetSpec(
        blocks, channels, block="fast", stem="whiten", pool_type="max", bn_momentum=0.4,
        head_bias=False, logit_scale=1 / 9,
    )  # fmt: skip


PRESETS: dict[str, Preset] = {
    "resnet24_b343": Preset(
        ResNetSpec((3, 4, 3), (66, 132, 264), pool=8),
        "the 5M Kaggle ResNet-24: basic [3,4,3], 66/132/264, 3x3, 8x8 average pool",
        "seed project README (B [3,4,3], C [66,132,264], F 3, P 8)",
    ),
    "custom_resnet9": Preset(
        ResNetSpec(
            (1, 0, 1), (128, 256, 512), block="res9", stem_channels=64, pool=4, pool_type="max"
        ),
        "prep 64, layer1 128 + residual, layer2 256, layer3 512 + residual, max-pool 4, FC",
        "S10 custom ResNet after David Page's ResNet-9 (DAWNBench)",
    ),
    "resnet23": Preset(
        ResNetSpec((3, 3, 3, 2), (64, 128, 256, 512), dropout=0.1, head_dropout=0.2),
        "basic [3,3,3,2], 64-512, 3x3 stem without max-pool, dropout 0.1 / head 0.2",
        "seed project ResNet-23",
    ),
    "resnet50": _imagenet_bottleneck((3, 4, 6, 3), 50),
    "resnet101": _imagenet_bottleneck((3, 4, 23, 3), 101),
    "resnet44v2": Preset(
        ResNetSpec(
            (7, 7, 7, 3), (32, 64, 128, 256), block="preact", head_dropout=0.1, num_classes=100
        ),
        "pre-activation basic [7,7,7,3], 32-256, global pool, dropout 0.1, CIFAR-100",
        "seed project ResNet-44 v2 (He et al. 2016b, Identity Mappings)",
    ),
    "resnet20": _he_cifar(20),
    "resnet56": _he_cifar(56),
    "resnet110": _he_cifar(110),
    "resnet18": Preset(
        ResNetSpec((2, 2, 2, 2), (64, 128, 256, 512)),
        "the usual CIFAR ResNet-18: basic [2,2,2,2], 64-512, 3x3 stem, global pool",
        "kuangliu/pytorch-cifar",
    ),
    "fastres_s": Preset(
        _fast((1, 1, 1), (64, 256, 256)),
        "airbench94's network made a ResNet: whitening stem, 3 stages of conv-pool-BN-GELU "
        "+ 1 residual unit, 64/256/256, global max-pool, logits x 1/9",
        "airbench94 (Jordan 2024), with an identity shortcut around each stage's second conv",
    ),
}
DEFAULT_PRESET = "resnet24_b343"


def list_presets() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> ResNetSpec:
    if name not in PRESETS:
        raise UserError(f"unknown preset {shorten(repr(name))}; known: {', '.join(PRESETS)}")
    return PRESETS[name].spec


def create_model(name_or_spec: str | ResNetSpec, **overrides: Any) -> ResNet:
    """`create_model("resnet18", num_classes=100)`: a preset (or a spec) with fields replaced."""
    spec = get_preset(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    return build(ResNetSpec.from_dict({**spec.to_dict(), **overrides}))


# ---------------------------------------------------------------------------------------------
# Command lines: every spec field is a flag with the field's name; a flag overrides the preset.


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "model", f"a preset (default {DEFAULT_PRESET}); flags override it"
    )
    g.add_argument("--preset", help=f"one of: {', '.join(PRESETS)}")
    g.add_argument("--blocks", type=int, nargs="+", metavar="B", help="units per stage")
    g.add_argument("--channels", type=int, nargs="+", metavar="C", help="channels per stage")
    g.add_argument("--kernel", type=int, metavar="F", help="kernel size of the units' convs")
    g.add_argument("--pool", type=int, metavar="P", help="head pooling window (0 = global)")
    g.add_argument("--pool-type", metavar="{avg,max}", help="head pooling")
    g.add_argument("--block", metavar="{" + ",".join(BLOCK_TYPES) + "}", help="unit type")
    g.add_argument("--expansion", type=int, help="bottleneck output / inner channels")
    g.add_argument(
        "--stem", metavar="{" + ",".join(STEMS) + "}",
        help="3x3/1; 7x7/2 + max-pool; or the frozen 2x2 whitening conv",
    )  # fmt: skip
    g.add_argument("--stem-channels", type=int, help="stem output channels (default channels[0])")
    g.add_argument("--shortcut", metavar="{projection,identity}", help="when shapes change")
    g.add_argument("--strides", type=int, nargs="+", help="stride per stage (default 1 2 2 ...)")
    g.add_argument("--dropout", type=float, help="dropout inside every residual unit")
    g.add_argument("--head-dropout", type=float, help="dropout before the classifier")
    g.add_argument("--num-classes", type=int)
    g.add_argument("--input-size", type=int, help="image side in pixels")
    g.add_argument("--bn-momentum", type=float, help="BatchNorm statistics momentum (PyTorch's)")
    g.add_argument(
        "--head-bias", action=argparse.BooleanOptionalAction, default=None,
        help="a bias in the classifier",
    )  # fmt: skip
    g.add_argument("--logit-scale", type=float, help="fixed factor on the logits")


def spec_from_args(
    args: argparse.Namespace, base_overrides: dict[str, Any] | None = None
) -> ResNetSpec:
    """The preset (default resnet24_b343), then `base_overrides` (a config file's `model:`),
    then the model flags typed on the command line."""
    base = get_preset(args.preset or DEFAULT_PRESET)
    given = {
        f.name: value
        for f in dataclasses.fields(ResNetSpec)
        if (value := getattr(args, f.name, None)) is not None
    }
    return ResNetSpec.from_dict({**base.to_dict(), **(base_overrides or {}), **given})
