"""What a network is: `ResNetSpec` (blocks B, channels C, kernel F, pool P, ...) and its layer plan.

The plan lists every layer with its shapes; `budgetnet.models.builder.build(spec)` turns it
into modules and `budgetnet.models.complexity` counts parameters and FLOPs from the same plan,
so the two cannot drift. No torch here: a spec can be checked and counted without it, and a
checkpoint stores `spec.to_dict()`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any, NamedTuple

from budgetnet.errors import UserError, brief, reject_unknown, shown

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
            if value is not None or name != "strides":  # only strides may be None
                object.__setattr__(self, name, _int_tuple(name, value))
        if not self.blocks or len(self.blocks) != len(self.channels):
            raise UserError(
                f"blocks {shown(list(self.blocks))} and channels {shown(list(self.channels))} "
                "must be non-empty and of the same length (one entry per stage)"
            )
        if self.strides is not None and len(self.strides) != len(self.blocks):
            raise UserError(f"strides {shown(list(self.strides))} needs one entry per stage")
        for name, choices in [
            ("block", BLOCK_TYPES), ("stem", STEMS), ("shortcut", SHORTCUTS),
            ("pool_type", POOL_TYPES),
        ]:  # fmt: skip
            if getattr(self, name) not in choices:
                raise UserError(
                    f"{name} must be one of {list(choices)}, got {shown(getattr(self, name))}"
                )
        min_blocks = 0 if self.block == "res9" else 1  # a ResNet-9 layer may have no units
        for name, values, minimum in [
            ("blocks", self.blocks, min_blocks), ("channels", self.channels, 1),
            ("strides", self.stage_strides, 1),
        ]:  # fmt: skip
            if not _ints_at_least(values, minimum):
                raise UserError(f"{name} must be integers >= {minimum}, got {shown(list(values))}")
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
                raise UserError(f"{name} {shown(list(values))} exceeds the limit of {cap}")
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
        reject_unknown(d, [f.name for f in dataclasses.fields(cls)], "model spec key")
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
    if stem.out_size < 1:  # the whitening stem's 2x2 patches need 2 pixels
        raise UserError(f"input_size {spec.input_size} is too small for the {spec.stem} stem")
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
