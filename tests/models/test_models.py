"""The spec, the builder and the model zoo."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torchvision

from budgetnet.cli import add_model_arguments, spec_from_args
from budgetnet.errors import UserError
from budgetnet.models.builder import build
from budgetnet.models.checkpoint import META_FILE, load_release, update_release_metrics
from budgetnet.models.spec import BLOCK_TYPES, ResNetSpec
from budgetnet.models.zoo import DEFAULT_MODEL, MODELS, create_model, list_models, model_spec

from tiny import save_random_release

# Published counts (see docs/models.md for where each comes from).
PRESET_PARAMS = {
    "resnet24_b343": 4_916_284,
    "custom_resnet9": 6_573_130,
    "resnet23": 12_724_042,
    "resnet50": 23_528_522,
    "resnet101": 42_520_650,
    "resnet44v2": 5_940_356,
    "resnet20": 269_722,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet18": 11_173_962,
    "fastres_s": 1_972_792,  # airbench94's 1,972,792 (frozen whitening filters and BN scales in)
    "fastres_wide": 4_606_520,  # airbench95's 4,606,520 (its widths, the same two-conv stages)
    "fastres_deep": 4_961_976,  # 2 units per stage, 64/256/384: under the 5M budget
    "fastres_proxy": 146_744,  # airbench96_faster's proxy, 146,744 (32/64/64, two-conv stages)
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_every_preset_has_its_published_count_and_trains_with_finite_gradients(name):
    torch.manual_seed(0)
    assert name in PRESET_PARAMS, f"{name}: pin its published parameter count here"
    spec = model_spec(name)
    model = create_model(name)
    assert n_params(model) == PRESET_PARAMS[name]
    batch = 1 if spec.input_size > 32 else 2  # keep the 224 px ImageNet networks quick on CPU
    out = model(torch.randn(batch, 3, spec.input_size, spec.input_size))
    assert out.shape == (batch, spec.num_classes)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:  # the whitening filters and fast BN scales are frozen
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, f"{pname} got a zero gradient"
        else:
            assert p.grad is None and (spec.stem == "whiten" or spec.block == "fast"), pname


@pytest.mark.parametrize("depth", [50, 101])
def test_imagenet_bottlenecks_match_torchvision(depth):
    ours = create_model(f"resnet{depth}")
    theirs = getattr(torchvision.models, f"resnet{depth}")(num_classes=10)
    assert n_params(ours) == n_params(theirs)

    def shapes(model):
        return sorted(tuple(p.shape) for p in model.parameters())

    assert shapes(ours) == shapes(theirs)


def test_default_preset_is_the_5m_resnet24():
    spec = model_spec(DEFAULT_MODEL)
    assert DEFAULT_MODEL == "resnet24_b343"
    assert (spec.blocks, spec.channels, spec.kernel, spec.pool) == ((3, 4, 3), (66, 132, 264), 3, 8)
    assert spec.shortcut == "projection" and spec.block == "basic"


def test_spec_round_trips_through_json_and_rebuilds_the_same_network():
    spec = ResNetSpec([2, 1], [8, 16], block="preact", dropout=0.1, strides=[1, 2], pool=2)
    again = ResNetSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and isinstance(again.blocks, tuple)
    torch.manual_seed(0)
    model = build(spec).eval()
    rebuilt = build(again).eval()
    rebuilt.load_state_dict(model.state_dict())  # strict: same names and shapes
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), rebuilt(x))
    assert model.spec == spec


def test_from_dict_rejects_unknown_and_missing_keys():
    d = model_spec("resnet20").to_dict()
    with pytest.raises(UserError, match=r"unknown model spec key\(s\) widht;"):
        ResNetSpec.from_dict({**d, "widht": 3})
    del d["channels"]
    with pytest.raises(UserError, match="missing"):
        ResNetSpec.from_dict(d)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"blocks": (3, 4), "channels": (66, 132, 264)}, "same length"),
        ({"kernel": 4}, "kernel must be odd"),
        ({"pool": 3}, "pool 3 does not divide the final 8x8 map"),
        ({"block": "dense"}, "block must be one of"),
        ({"stem": "tiny"}, "stem must be one of"),
        ({"blocks": (3, 0, 3)}, "blocks must be integers >= 1"),
        ({"channels": (66, 132.5, 264)}, "channels must be integers"),
        ({"strides": (1, 2)}, "one entry per stage"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
        ({"channels": (66, 32, 264), "shortcut": "identity"}, "identity shortcut can only add"),
        ({"input_size": 4, "strides": (2, 2, 2), "pool": 0}, None),  # 4 -> 2 -> 1 -> 1 is fine
        ({"blocks": "343"}, "must be a list of integers"),
    ],
)
def test_invalid_spec_fields_are_refused_with_a_message(fields, message):
    base = model_spec("resnet24_b343").to_dict()
    if message is None:
        ResNetSpec.from_dict({**base, **fields})
        return
    with pytest.raises(UserError, match=message):
        ResNetSpec.from_dict({**base, **fields})


def test_res9_allows_stages_without_units_and_checks_its_pools():
    spec = ResNetSpec((0, 0), (8, 16), block="res9", pool=0)
    assert [len(stage) for stage in spec.plan.stages] == [1, 1]
    with pytest.raises(UserError, match="too small for a max-pool"):
        ResNetSpec((0,) * 6, (4,) * 6, block="res9", pool=0)


def parse(*argv: str) -> ResNetSpec:
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    return spec_from_args(parser.parse_args(argv))


def test_flags_map_onto_the_spec():
    resnet24 = model_spec("resnet24_b343")
    assert parse() == resnet24
    assert parse("--blocks", "3", "4", "3", "--channels", "66", "132", "264") == resnet24
    spec = parse("--model", "resnet20", "--kernel", "5", "--pool", "8", "--block", "preact",
                 "--shortcut", "projection", "--strides", "1", "2", "1", "--dropout", "0.2",
                 "--head-dropout", "0.3", "--num-classes", "100", "--input-size", "64",
                 "--stem", "imagenet", "--stem-channels", "8", "--pool-type", "max")  # fmt: skip
    assert spec == ResNetSpec(
        (3, 3, 3), (16, 32, 64), kernel=5, pool=8, block="preact", shortcut="projection",
        strides=(1, 2, 1), dropout=0.2, head_dropout=0.3, num_classes=100, input_size=64,
        stem="imagenet", stem_channels=8, pool_type="max",
    )  # fmt: skip
    with pytest.raises(UserError, match="unknown model 'resnet9'"):
        parse("--model", "resnet9")


def test_create_model_applies_overrides_like_timm():
    model = create_model("resnet18", num_classes=100)
    assert model.spec == ResNetSpec((2, 2, 2, 2), (64, 128, 256, 512), num_classes=100)
    assert model.head.fc.out_features == 100
    with pytest.raises(UserError, match="unknown model spec key"):
        create_model("resnet18", classes=100)
    assert create_model(model_spec("resnet20")).spec == MODELS["resnet20"].spec


def test_identity_shortcut_zero_pads_and_subsamples():
    model = build(ResNetSpec((1, 1), (4, 8), shortcut="identity")).eval()
    shortcut = model.stages[1][0].shortcut
    x = torch.randn(1, 4, 6, 6)
    y = shortcut(x)
    assert y.shape == (1, 8, 3, 3)
    torch.testing.assert_close(y[:, :4], x[:, :, ::2, ::2])
    assert not y[:, 4:].any()


def test_convs_are_kaiming_initialised():
    torch.manual_seed(0)
    conv = create_model("resnet18").stages[3][1].conv2  # 512 -> 512, 3x3
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.02)


@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_every_batchnorm_gets_the_specs_momentum(block):
    # units and projection shortcuts alike: the builder has no default to fall back on
    model = build(ResNetSpec((1, 1), (8, 16), block=block, bn_momentum=0.3))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and {m.momentum for m in norms} == {0.3}


def test_update_release_metrics_replaces_only_the_metrics(tmp_path):
    folder = save_random_release(tmp_path / "r", seed=0, provenance={"data": {"seed": 3}})
    before = json.loads((folder / META_FILE).read_text())
    release = load_release(folder)
    update_release_metrics(release, {"test_acc_tta0": 0.5})
    after = json.loads((folder / META_FILE).read_text())
    assert after == {**before, "metrics": {"test_acc_tta0": 0.5}}
    assert list(after) == list(before)  # the keys keep their order
    assert load_release(folder).meta["metrics"] == {"test_acc_tta0": 0.5}
    assert not list(folder.glob("*.tmp"))


def test_airbench_fields_are_checked_and_fast_stages_all_downsample():
    with pytest.raises(UserError, match="24 channels"):
        ResNetSpec((1,), (8,), stem="whiten", stem_channels=16)
    with pytest.raises(UserError, match="logit_scale"):
        ResNetSpec((1,), (8,), logit_scale=0)
    with pytest.raises(UserError, match="bn_momentum"):
        ResNetSpec((1,), (8,), bn_momentum=1.5)
    spec = ResNetSpec((1, 1), (8, 16), block="fast", stem="whiten", pool_type="max")
    assert spec.stage_strides == (2, 2) and spec.plan.stages[-1][-1].out_size == 7
