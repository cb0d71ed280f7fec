"""Exact parameter and FLOP counts, receptive fields and a per-layer table, without building.

Everything here is integer arithmetic over `spec.plan`, the same layer plan `build(spec)` makes
its modules from, so it needs no torch modules and counts tens of thousands of specs a second.

FLOPs mean what `torch.utils.flop_counter.FlopCounterMode` reports for one image: 2 per
multiply-add of a convolution or of the classifier's matmul, and nothing for biases, BN, ReLU,
pooling, dropout or the residual additions.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

from budgetnet.models.spec import Block, Layer, ResNetSpec
from budgetnet.tables import markdown_table

# No parameters, no FLOPs, same numbers out.
# The competition's rule: at most this many parameters in the model that labels the test set
# (an averaged ensemble counts every member).
PARAMETER_BUDGET = 5_000_000
_SILENT_OPS = ("relu", "gelu", "dropout", "flatten", "scale")


class FlopCount(NamedTuple):
    macs: int  # multiply-adds per image
    flops: int  # 2 * macs, as FlopCounterMode counts


class LayerRow(NamedTuple):
    name: str  # module path in build(spec), e.g. "stages.1.0.conv1"
    op: str
    output_shape: tuple[int, ...]  # per image: (C, H, W), or (features,) after the classifier
    params: int
    flops: int


def layer_params(layer: Layer) -> int:
    """Every parameter, frozen ones included (the whitening filters, the fixed BN scales):
    a budget counts `model.parameters()`, whatever trains."""
    if layer.op == "conv":
        return (layer.in_channels * layer.kernel**2 + layer.bias) * layer.out_channels
    if layer.op in ("bn", "bn_shift"):  # weight and bias; the running statistics are buffers
        return 2 * layer.out_channels
    if layer.op == "linear":
        return (layer.in_channels + layer.bias) * layer.out_channels
    return 0


def layer_macs(layer: Layer) -> int:
    if layer.op == "conv":
        return layer.in_channels * layer.out_channels * layer.kernel**2 * layer.out_size**2
    if layer.op == "linear":
        return layer.in_channels * layer.out_channels
    return 0


@functools.cache
def _block_cost(block: Block) -> tuple[int, int]:
    """(params, macs) of a block; cached because a search meets the same units again and again."""
    layers = block.layers + block.shortcut
    return sum(map(layer_params, layers)), sum(map(layer_macs, layers))


@functools.lru_cache(maxsize=1)  # count_params and count_flops usually come as a pair
def _cost(spec: ResNetSpec) -> tuple[int, int]:
    plan = spec.plan
    blocks = (plan.stem, *itertools.chain.from_iterable(plan.stages), plan.head)
    params, macs = zip(*map(_block_cost, blocks), strict=True)
    return sum(params), sum(macs)


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
    for name, blocks in groups:
        for block in blocks:
            for layer in block.layers:
                if layer.op in ("conv", "maxpool", "avgpool"):
                    field += (layer.kernel - 1) * jump
                    jump *= layer.stride
        fields[name] = field
    return fields


def layer_table(spec: ResNetSpec) -> list[LayerRow]:
    """One row per layer that holds parameters, costs FLOPs or changes the shape, in order."""
    rows = []
    for block_name, block in spec.plan.named_blocks():
        named = [(f"{block_name}.{layer.name}", layer) for layer in block.layers]
        named += [(f"{block_name}.shortcut.{layer.name}", layer) for layer in block.shortcut]
        for name, layer in named:
            if layer.op in _SILENT_OPS:
                continue
            shape = (
                (layer.out_channels,)
                if layer.op == "linear"
                else (layer.out_channels, layer.out_size, layer.out_size)
            )
            rows.append(LayerRow(name, layer.op, shape, layer_params(layer), 2 * layer_macs(layer)))
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
