"""What a network is: `ResNetSpec` (blocks B, channels C, kernel F, pool P, ...) and its plan.

The plan lists its parts (the stem, each stage's opening layer and units, the head), whose
classes in `budgetnet.models.blocks` lay out their layers with the shapes;
`budgetnet.models.builder.build` builds those classes and `budgetnet.models.complexity` counts
parameters and FLOPs from the same plan, so the two cannot drift. Laying out builds no module.
A checkpoint stores `spec.to_dict()`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any, NamedTuple

from budgetnet.errors import UserError, brief, reject_unknown, shown
from budgetnet.models.blocks import (
    STEM_TYPES,
    UNIT_TYPES,
    WHITEN_CHANNELS,
    WHITEN_KERNEL,
    Head,
    Part,
    ResidualUnit,
)

BLOCK_TYPES = tuple(UNIT_TYPES)  # ("basic", "bottleneck", "preact", "res9", "fast")
STEMS = tuple(STEM_TYPES)  # ("cifar", "imagenet", "whiten")
SHORTCUTS = ("projection", "identity")
MAX_CHANNELS = 8192  # per stage (and classes); with MAX_BLOCKS, a cap for specs read from files
MAX_BLOCKS = 256  # units per stage, and stages
POOL_TYPES = ("avg", "max")


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """Everything that decides a network's layers; validated on construction.

    Two fields say "block", after the ResNet papers and the command line (`--block`,
    `--blocks 3 4 3`): `block` is the residual unit's type (basic, bottleneck, preact, res9,
    fast), and `blocks[i]` is the number of those units in stage i. Neither is a plan entry:
    those are `Part`s (budgetnet.models.blocks).

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
# The plan: which parts, in which order. Each part's layers are laid out by its class (blocks.py).


class Plan(NamedTuple):
    stem: Part
    stages: tuple[tuple[Part, ...], ...]  # per stage: its opening layer if any, then its units
    head: Part

    def named_parts(self) -> Iterator[tuple[str, Part]]:
        """(module path, part) in forward order; the paths are those of `build(spec)`."""
        yield "stem", self.stem
        for i, stage in enumerate(self.stages):
            for j, part in enumerate(stage):
                yield f"stages.{i}.{j}", part
        yield "head", self.head


@functools.cache
def _stage(
    unit: type[ResidualUnit], cin: int, width: int, n_units: int, kernel: int, stride: int,
    size: int, shortcut: str, dropout: float, expansion: int,
) -> tuple[Part, ...]:  # fmt: skip
    """The opening layer if the unit type has one (it downsamples), then the units; cached."""
    stage = []
    if opening := unit.opening(cin, width, kernel, stride, size):
        stage.append(opening)
        cin, size, stride = width, opening.out_size, 1
    for i in range(n_units):
        unit_stride = stride if i == 0 else 1  # the first unit downsamples
        part = unit.plan(cin, width, kernel, unit_stride, size, shortcut, dropout, expansion)
        stage.append(part)
        cin, size = part.out_channels, part.out_size
    return tuple(stage)


def _plan(spec: ResNetSpec) -> Plan:
    unit = UNIT_TYPES[spec.block]
    channels = spec.stem_channels or spec.channels[0]
    stem = STEM_TYPES[spec.stem].plan(channels, spec.input_size, unit.pre_activation)
    if stem.out_size < 1:  # the whitening stem's 2x2 patches need 2 pixels
        raise UserError(f"input_size {spec.input_size} is too small for the {spec.stem} stem")
    channels, size, stages = stem.out_channels, stem.out_size, []
    for n_units, width, stride in zip(spec.blocks, spec.channels, spec.stage_strides, strict=True):
        stage = _stage(
            unit, channels, width, n_units, spec.kernel, stride, size,
            spec.shortcut, spec.dropout, spec.expansion,
        )  # fmt: skip
        stages.append(stage)
        channels, size = stage[-1].out_channels, stage[-1].out_size
    head = Head.plan(
        channels, size, spec.pool, spec.pool_type, spec.head_dropout, spec.num_classes,
        spec.head_bias, spec.logit_scale, unit.pre_activation,
    )  # fmt: skip
    return Plan(stem, tuple(stages), head)
