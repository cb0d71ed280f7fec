"""The optimizers (budgetnet.training.optim, muon): decoupled SGD hyperparameters as airbench
states them, the BatchNorm-bias group, Muon beside SGD, and frozen parameters left out of the
step. The `fast` preset's settings are the example throughout."""

from __future__ import annotations

import pytest
import torch

from budgetnet.models.builder import build
from budgetnet.models.zoo import model_spec
from budgetnet.training import engine, optim, schedule
from budgetnet.training.augment import BatchAugment
from budgetnet.training.config import recipe_config
from budgetnet.training.muon import Muon, orthogonalize
from budgetnet.training.objective import Objective

from tiny import PREPROCESSING

FAST = recipe_config("fast")


def test_decoupled_hyperparameters_convert_as_airbench_states_them():
    config = FAST.optimizer
    momentum_scale = 1 + 1 / (1 - 0.85)  # a Nesterov step's size per gradient, steady state
    assert config.effective_lr == pytest.approx(11.5 / momentum_scale)  # batch 1024 = base
    assert config.effective_weight_decay == pytest.approx(0.0153 / 11.5)
    # torch shrinks by lr x weight_decay per step: airbench's 0.0153 * 1024 / kilostep_scale
    per_step = config.effective_lr * config.effective_weight_decay
    assert per_step == pytest.approx(0.0153 * 1024 / (1024 * momentum_scale))
    half = FAST.with_values(batch_size=512).optimizer
    assert half.effective_lr == pytest.approx(config.effective_lr / 2)  # lr per 1024 images
    assert half.effective_weight_decay == config.effective_weight_decay


def test_bias_groups_get_the_scaled_lr_and_the_same_decay_per_step():
    config = FAST
    model = build(model_spec("fastres_s"))
    groups = optim.make_optimizer(config, model).param_groups
    weights, bn_biases, other = groups
    assert all(p.ndim == 4 or p.ndim == 2 for p in weights["params"])
    assert bn_biases["lr"] == pytest.approx(64 * weights["lr"])
    assert bn_biases["lr"] * bn_biases["weight_decay"] == pytest.approx(
        weights["lr"] * weights["weight_decay"]
    )
    assert other["params"] == [model.stem.conv.bias]  # the whitening bias, decayed too
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    assert not any(p is model.stem.conv.weight for g in groups for p in g["params"])


def test_orthogonalize_gives_near_unit_singular_values_and_muon_steps_by_them():
    g = torch.randn(64, 3 * 3 * 32, generator=torch.Generator().manual_seed(0))
    singular = torch.linalg.svdvals(orthogonalize(g))
    assert singular.min() > 0.3 and singular.max() < 1.6  # near 1, not exactly (by design)
    conv = torch.nn.Conv2d(32, 64, 3, bias=False)
    conv.weight.grad = torch.randn_like(conv.weight)
    before = conv.weight.detach().clone()
    Muon([conv.weight], lr=0.1).step()
    step = conv.weight.detach() - before * (64**0.5 / before.norm())
    assert torch.linalg.svdvals(step.reshape(64, -1)).max() < 0.2  # lr x (about) orthogonal


def test_muon_pairs_with_sgd_and_round_trips_its_state():
    config = FAST.with_values(opt="muon")
    model = build(model_spec("fastres_s"))
    optimizer = optim.make_optimizer(config, model)
    filters = {id(p) for p in model.parameters() if p.ndim == 4 and p.requires_grad}
    muon_params = {id(p) for p in optimizer.optimizers[1].param_groups[0]["params"]}
    assert muon_params == filters
    set_lr = schedule.make_schedule(config, optimizer, steps_per_epoch=10)
    set_lr(0)
    assert optimizer.param_groups[-1]["lr"] == pytest.approx(0.2 * config.optimizer.muon_lr)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    again = optim.make_optimizer(config, build(model_spec("fastres_s")))
    again.load_state_dict(state)
    assert len(again.optimizers[1].state) == len(filters)


def test_frozen_parameters_sit_the_step_out():
    model = build(model_spec("fastres_s"))
    config = FAST.with_values(batch_size=8)
    optimizer = optim.make_optimizer(config, model)
    augment = BatchAugment(config, PREPROCESSING, 10, torch.device("cpu"))
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    bias, head = model.stem.conv.bias.detach().clone(), model.head.fc.weight.detach().clone()
    objective = Objective(config)
    stem = [model.stem.conv.bias]
    labels = torch.arange(8) % 10
    engine.train_step(
        model, optimizer, augment, objective, images, labels, torch.device("cpu"), True, stem
    )
    assert torch.equal(model.stem.conv.bias, bias)  # no step, no decay
    assert not torch.equal(model.head.fc.weight, head)
