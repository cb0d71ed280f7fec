"""The model registry: the published systems this project grew from, by name (timm style).

`python code/train.py --model fastres_s`, `create_model("resnet18", num_classes=100)`,
`python code/summary.py --list`. A name stands for a `ResNetSpec`; flags override its fields.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from budgetnet.errors import UserError, shorten
from budgetnet.models.builder import ResNet, build
from budgetnet.models.spec import ResNetSpec


class ModelEntry(NamedTuple):
    spec: ResNetSpec
    description: str
    source: str


def _he_cifar(depth: int) -> ModelEntry:
    n = (depth - 2) // 6  # 6n + 2 layers: 3 stages of n two-conv units, the stem and the classifier
    return ModelEntry(
        ResNetSpec((n,) * 3, (16, 32, 64), shortcut="identity"),
        f"He et al.'s CIFAR ResNet-{depth}: 3 x {n} basic units, 16/32/64, zero-padded shortcuts",
        "He et al. 2016, Deep Residual Learning, sec. 4.2",
    )


def _imagenet_bottleneck(blocks: tuple[int, ...], depth: int) -> ModelEntry:
    return ModelEntry(
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


MODELS: dict[str, ModelEntry] = {
    "resnet24_b343": ModelEntry(
        ResNetSpec((3, 4, 3), (66, 132, 264), pool=8),
        "the 5M Kaggle ResNet-24: basic [3,4,3], 66/132/264, 3x3, 8x8 average pool",
        "seed project README (B [3,4,3], C [66,132,264], F 3, P 8)",
    ),
    "custom_resnet9": ModelEntry(
        ResNetSpec(
            (1, 0, 1), (128, 256, 512), block="res9", stem_channels=64, pool=4, pool_type="max"
        ),
        "prep 64, layer1 128 + residual, layer2 256, layer3 512 + residual, max-pool 4, FC",
        "S10 custom ResNet after David Page's ResNet-9 (DAWNBench)",
    ),
    "resnet23": ModelEntry(
        ResNetSpec((3, 3, 3, 2), (64, 128, 256, 512), dropout=0.1, head_dropout=0.2),
        "basic [3,3,3,2], 64-512, 3x3 stem without max-pool, dropout 0.1 / head 0.2",
        "seed project ResNet-23",
    ),
    "resnet50": _imagenet_bottleneck((3, 4, 6, 3), 50),
    "resnet101": _imagenet_bottleneck((3, 4, 23, 3), 101),
    "resnet44v2": ModelEntry(
        ResNetSpec(
            (7, 7, 7, 3), (32, 64, 128, 256), block="preact", head_dropout=0.1, num_classes=100
        ),
        "pre-activation basic [7,7,7,3], 32-256, global pool, dropout 0.1, CIFAR-100",
        "seed project ResNet-44 v2 (He et al. 2016b, Identity Mappings)",
    ),
    "resnet20": _he_cifar(20),
    "resnet56": _he_cifar(56),
    "resnet110": _he_cifar(110),
    "resnet18": ModelEntry(
        ResNetSpec((2, 2, 2, 2), (64, 128, 256, 512)),
        "the usual CIFAR ResNet-18: basic [2,2,2,2], 64-512, 3x3 stem, global pool",
        "kuangliu/pytorch-cifar",
    ),
    "fastres_s": ModelEntry(
        _fast((1, 1, 1), (64, 256, 256)),
        "airbench94's network made a ResNet: whitening stem, 3 stages of conv-pool-BN-GELU "
        "+ 1 residual unit, 64/256/256, global max-pool, logits x 1/9",
        "airbench94 (Jordan 2024), with an identity shortcut around each stage's second conv",
    ),
    "fastres_wide": ModelEntry(
        _fast((1, 1, 1), (128, 384, 384)),
        "airbench95's widths in fastres_s's layout: 3 stages of conv-pool-BN-GELU + 1 residual "
        "unit, 128/384/384 (2.6x fastres_s's FLOPs)",
        "airbench95 (Jordan 2024), with an identity shortcut around each stage's second conv",
    ),
    "fastres_deep": ModelEntry(
        _fast((2, 2, 2), (64, 256, 384)),
        "fastres_s with 2 residual units per stage, the last stage widened to 384 to fill the "
        "budget: 64/256/384 (1.6x fastres_s's FLOPs; the 32 px stage kept narrow, it costs most)",
        "airbench96's two-conv residual stages (Jordan 2024), widths cut to fit 5M",
    ),
    "fastres_proxy": ModelEntry(
        _fast((1, 1, 1), (32, 64, 64)),
        "a small fastres_s for data filtering (--filter-keep): 32/64/64, 0.15M parameters, "
        "a seventh of fastres_s's FLOPs",
        "airbench96_faster's proxy widths (Jordan 2024), in fastres_s's layout",
    ),
}
DEFAULT_MODEL = "resnet24_b343"


def list_models() -> list[str]:
    return list(MODELS)


def model_spec(name: str) -> ResNetSpec:
    """The spec registered as `name`."""
    if name not in MODELS:
        raise UserError(f"unknown model {shorten(repr(name))}; known: {', '.join(MODELS)}")
    return MODELS[name].spec


def create_model(name_or_spec: str | ResNetSpec, **overrides: Any) -> ResNet:
    """`create_model("resnet18", num_classes=100)`: a registered model (or a spec) with fields
    replaced."""
    spec = model_spec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    return build(ResNetSpec.from_dict({**spec.to_dict(), **overrides}))
