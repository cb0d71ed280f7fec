"""Exact parameter and FLOP counts, receptive fields and a per-layer table, without building.

Everything here is integer arithmetic over `spec.plan`, the parts `build(spec)` makes its
modules from, each layer with its own formulas (`budgetnet.models.blocks`), so it builds no
torch module and counts tens of thousands of specs a second.

FLOPs mean what `torch.utils.flop_counter.FlopCounterMode` reports for one image: 2 per
multiply-add of a convolution or of the classifier's matmul, and nothing for biases, BN, ReLU,
pooling, dropout or the residual additions.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

from budgetnet.models.spec import ResNetSpec
from budgetnet.tables import markdown_table

# The competition's rule: at most this many parameters in the model that labels the test set
# (an averaged ensemble counts every member).
PARAMETER_BUDGET = 5_000_000


class FlopCount(NamedTuple):
    macs: int  # multiply-adds per image
    flops: int  # 2 * macs, as FlopCounterMode counts


class LayerRow(NamedTuple):
    name: str  # module path in build(spec), e.g. "stages.1.0.conv1"
    op: str
    output_shape: tuple[int, ...]  # per image: (C, H, W), or (features,) after the classifier
    params: int
    flops: int


@functools.lru_cache(maxsize=1)  # count_params and count_flops usually come as a pair
def _cost(spec: ResNetSpec) -> tuple[int, int]:
    plan = spec.plan
    parts = (plan.stem, *itertools.chain.from_iterable(plan.stages), plan.head)
    return sum(p.params for p in parts), sum(p.macs for p in parts)


def count_params(spec: ResNetSpec) -> int:
    """Exactly `sum(p.numel() for p in build(spec).parameters())`."""
    return _cost(spec)[0]


def count_flops(spec: ResNetSpec) -> FlopCount:
    """Forward cost of one image, exactly FlopCounterMode's total for a batch of one."""
    macs = _cost(spec)[1]
    return FlopCount(macs, 2 * macs)


def receptive_field(spec: ResNetSpec) -> dict[str, int]:
    """Receptive field in input pixels after the stem and after each stage ("stage1", ...).

    Taken along the deepest path (every conv of every unit); the shortcuts see less. It can
    exceed the image: the rest of the window falls on padding.
    """
    plan = spec.plan
    groups = [("stem", (plan.stem,))]
    groups += [(f"stage{i + 1}", stage) for i, stage in enumerate(plan.stages)]
    field, jump, fields = 1, 1, {}
    for name, parts in groups:
        for part in parts:
            for layer in part.layers:
                kernel, stride = layer.window
                field += (kernel - 1) * jump
                jump *= stride
        fields[name] = field
    return fields


def layer_table(spec: ResNetSpec) -> list[LayerRow]:
    """One row per layer that holds parameters, costs FLOPs or changes the shape, in order."""
    rows = []
    for part_name, part in spec.plan.named_parts():
        for path, layer in part.named_layers():
            if layer.in_table:
                row = (layer.op, layer.output_shape, layer.params, 2 * layer.macs)
                rows.append(LayerRow(f"{part_name}.{path}", *row))
    return rows


def format_summary(spec: ResNetSpec) -> str:
    """The per-layer table, the totals and the receptive fields, like torchinfo's summary."""
    rows = layer_table(spec)
    table = markdown_table(
        ["layer", "op", "output shape", "params", "FLOPs"],
        [(r.name, r.op, "x".join(map(str, r.output_shape)), r.params, r.flops) for r in rows],
    )
    flops = count_flops(spec)
    fields = ", ".join(f"{name} {rf}" for name, rf in receptive_field(spec).items())
    return "\n".join(
        [
            table,
            "",
            f"parameters: {count_params(spec):,}",
            f"per {spec.input_size}x{spec.input_size} image: {flops.macs:,} multiply-adds, "
            f"{flops.flops:,} FLOPs (FlopCounterMode's count)",
            f"receptive field (px): {fields}",
        ]
    )
