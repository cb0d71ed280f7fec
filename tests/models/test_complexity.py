"""Closed-form counts against the built network: parameters, FLOPs, receptive field, table."""

from __future__ import annotations

import contextlib
import dataclasses
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import summary as summary_cli
from budgetnet.errors import UserError, run_cli
from budgetnet.models.blocks import ZeroPadShortcut
from budgetnet.models.builder import build
from budgetnet.models.complexity import (
    count_flops,
    count_params,
    format_summary,
    layer_table,
    receptive_field,
)
from budgetnet.models.spec import BLOCK_TYPES, STEMS, ResNetSpec
from budgetnet.models.zoo import MODELS, model_spec


def random_spec(rng: random.Random) -> ResNetSpec:
    """A small valid spec of any block type, stem, shortcut, pool, stride and kernel."""
    block = rng.choice(BLOCK_TYPES)
    stages = rng.randint(1, 4)
    shortcut = rng.choice(["projection", "identity"])
    channels = [rng.randint(1, 12) for _ in range(stages)]
    if shortcut == "identity":  # an identity shortcut can only add channels
        channels.sort()
    stem = rng.choice(STEMS)
    spec = ResNetSpec(
        blocks=[rng.randint(0 if block == "res9" else 1, 2) for _ in range(stages)],
        channels=channels,
        kernel=rng.choice([1, 3, 5]),
        block=block,
        stem=stem,
        stem_channels=(
            rng.choice([None, rng.randint(1, 12)])
            if shortcut == "projection" and stem != "whiten"
            else None
        ),
        shortcut=shortcut,
        strides=rng.choice([None, [rng.randint(1, 2) for _ in range(stages)]]),
        expansion=rng.randint(1, 4),
        dropout=rng.choice([0.0, 0.2]),
        head_dropout=rng.choice([0.0, 0.5]),
        pool_type=rng.choice(["avg", "max"]),
        num_classes=rng.randint(1, 12),
        input_size=rng.choice([16, 24, 32]),
        bn_momentum=rng.choice([0.1, 0.4]),
        head_bias=rng.choice([True, False]),
        logit_scale=rng.choice([1.0, 1 / 9]),
    )
    # The head pool must divide the final map: pick one of its divisors, or global.
    final = spec.plan.stages[-1][-1].out_size
    return dataclasses.replace(
        spec, pool=rng.choice([0] + [d for d in range(1, 9) if final % d == 0])
    )


def random_specs(count: int, seed: int) -> list[ResNetSpec]:
    rng, specs = random.Random(seed), []
    while len(specs) < count:
        with contextlib.suppress(UserError):  # e.g. more downsampling than the input allows
            specs.append(random_spec(rng))
    return specs


def test_random_specs_cover_every_option():
    specs = random_specs(300, seed=0)
    for field, values in [
        ("block", BLOCK_TYPES),
        ("stem", STEMS),
        ("head_bias", (True, False)),
        ("shortcut", ("projection", "identity")),
        ("pool_type", ("avg", "max")),
    ]:
        assert {getattr(s, field) for s in specs} == set(values), field
    assert {s.pool > 0 for s in specs} == {True, False}
    assert any(s.strides and 1 in s.strides[1:] for s in specs)
    assert any(0 in s.blocks for s in specs)  # res9 stages made of the layer alone


def test_count_params_equals_the_built_model_over_300_random_specs():
    for spec in random_specs(300, seed=0):
        model = build(spec)
        assert count_params(spec) == sum(p.numel() for p in model.parameters()), spec


@pytest.mark.parametrize("name", list(MODELS))
def test_count_params_equals_the_built_presets(name):
    spec = model_spec(name)
    assert count_params(spec) == sum(p.numel() for p in build(spec).parameters())


def measured_flops(spec: ResNetSpec) -> int:
    model = build(spec).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, spec.input_size, spec.input_size))
    return counter.get_total_flops()


def test_flops_equal_flop_counter_mode_over_random_specs():
    for spec in random_specs(60, seed=1):
        flops = count_flops(spec)
        assert flops.flops == 2 * flops.macs == measured_flops(spec), spec


@pytest.mark.parametrize("name", ["resnet24_b343", "custom_resnet9", "resnet44v2", "resnet20"])
def test_flops_equal_flop_counter_mode_on_presets(name):
    assert count_flops(model_spec(name)).flops == measured_flops(model_spec(name))


@pytest.mark.parametrize("shortcut", ["projection", "identity"])
@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_every_block_type_and_stem_builds_exactly_its_planned_layers(block, stem, shortcut):
    """Each planned layer is the module at its path, of its shapes, and nothing else is built;
    the counts are the built network's. Widths grow (from the whitening stem's 24 too), so
    every unit type meets a shape change."""
    spec = ResNetSpec(
        (1, 2), (24, 32), block=block, stem=stem, shortcut=shortcut, expansion=2, dropout=0.1,
        head_dropout=0.1, logit_scale=0.5,
    )  # fmt: skip
    model = build(spec).eval()
    planned = {
        f"{part_name}.{path}": layer
        for part_name, part in spec.plan.named_parts()
        for path, layer in part.named_layers()
    }
    leaves = {
        name: module
        for name, module in model.named_modules()
        if not list(module.children())
        and not isinstance(module, torch.nn.Identity | ZeroPadShortcut)
    }
    assert list(leaves) == list(planned)
    shapes = {}
    for name, layer in planned.items():
        module = leaves[name]
        assert type(module) is type(layer.module(spec.bn_momentum)), name
        assert sum(p.numel() for p in module.parameters()) == layer.params, name
        module.register_forward_hook(lambda m, i, o, name=name: shapes.update({name: o.shape}))
    assert count_params(spec) == sum(p.numel() for p in model.parameters())
    assert count_flops(spec).flops == measured_flops(spec)
    model(torch.randn(1, 3, spec.input_size, spec.input_size))
    assert shapes == {name: (1, *layer.output_shape) for name, layer in planned.items()}


def test_the_table_matches_the_modules_and_sums_to_the_totals():
    for spec in [*random_specs(40, seed=2), model_spec("resnet50")]:
        model = build(spec)
        modules = dict(model.named_modules())
        rows = layer_table(spec)
        for row in rows:
            assert sum(p.numel() for p in modules[row.name].parameters()) == row.params, row
        assert sum(r.params for r in rows) == count_params(spec)
        assert sum(r.flops for r in rows) == count_flops(spec).flops
        assert rows[-1].output_shape == (spec.num_classes,)


def test_table_shapes_match_a_forward_pass():
    spec = model_spec("custom_resnet9")
    model = build(spec).eval()
    shapes = {}
    for row in layer_table(spec):
        module = model.get_submodule(row.name)
        module.register_forward_hook(lambda m, i, o, name=row.name: shapes.update({name: o.shape}))
    model(torch.randn(1, 3, 32, 32))
    assert {r.name: (1, *r.output_shape) for r in layer_table(spec)} == shapes


def test_receptive_field_of_resnet24_grows_stage_by_stage_as_counted_by_hand():
    # Stem 3x3: 3; stage 1 adds 6 convs x 2 px; stage 2: 8 convs, stride 2 after the first, ...
    assert receptive_field(model_spec("resnet24_b343")) == {
        "stem": 3, "stage1": 15, "stage2": 45, "stage3": 89
    }  # fmt: skip


@pytest.mark.parametrize(
    "spec",
    [
        ResNetSpec((1, 2), (4, 8), kernel=3, input_size=64),
        ResNetSpec((2, 1), (4, 4), kernel=5, block="bottleneck", expansion=1, input_size=64),
        ResNetSpec((1, 1), (4, 8), block="preact", strides=(2, 2), input_size=64),
    ],
)
def test_receptive_field_is_the_span_of_the_input_gradient(spec):
    """Backpropagate from the centre unit of each stage; the input pixels reached span the RF."""
    torch.manual_seed(0)
    model = build(spec).eval()
    fields = receptive_field(spec)
    x = torch.randn(4, 3, spec.input_size, spec.input_size, requires_grad=True)
    features = model.stem(x)
    outputs = {"stem": features}
    for i, stage in enumerate(model.stages):
        features = stage(features)
        outputs[f"stage{i + 1}"] = features
    for name, out in outputs.items():
        centre = out[:, :, out.shape[2] // 2, out.shape[3] // 2].sum()
        (grad,) = torch.autograd.grad(centre, x, retain_graph=True)
        rows = grad.abs().sum(dim=(0, 1, 3)).nonzero()
        assert rows.max() - rows.min() + 1 == fields[name], name


def test_format_summary_states_totals_and_receptive_field():
    text = format_summary(model_spec("resnet24_b343"))
    assert "| stages.1.0.shortcut.conv |" in text
    assert "parameters: 4,916,284" in text
    assert "1,538,081,952 FLOPs" in text
    assert "receptive field (px): stem 3, stage1 15, stage2 45, stage3 89" in text


def test_counting_builds_no_modules(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("counting built a torch module")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    spec = ResNetSpec((2, 3), (24, 48), kernel=7, pool=4, input_size=48)  # not counted before
    assert count_params(spec) > 0 and count_flops(spec).macs > 0
    assert layer_table(spec) and receptive_field(spec)


def run_summary(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(summary_cli.main, list(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_summary_prints_the_totals_and_refuses_bad_flags_in_one_line(capsys):
    code, out, _ = run_summary(capsys, "--model", "custom_resnet9")
    assert code == 0 and "parameters: 6,573,130" in out and "head.fc" in out
    code, out, _ = run_summary(capsys, "--blocks", "3", "4", "3", "--channels", "66", "132", "264")
    assert code == 0 and "parameters: 4,916,284" in out
    for argv, fragment in [(["--kernel", "4"], "kernel must be odd"), (["--model", "x"], "'x'")]:
        code, out, err = run_summary(capsys, *argv)
        assert code == 2 and out == ""
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and fragment in err


def test_summary_list_shows_every_model_with_its_counts(run_main):
    result = run_main("code/summary.py", "--list")
    assert result.returncode == 0, result.stderr
    for name in MODELS:
        assert f"| {name} " in result.stdout
    assert "4,916,284" in result.stdout and "6,573,130" in result.stdout
