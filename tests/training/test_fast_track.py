"""The fast-track recipe: whitening stem, decoupled SGD, the piecewise-linear schedule,
Lookahead, the alternating flip, reflect-padded translation, Muon and the hardware rules."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from budgetnet import runtime
from budgetnet.data.normalization import Normalization, normalize
from budgetnet.models.builder import build
from budgetnet.models.spec import ResNetSpec
from budgetnet.models.whitening import init_whitening, patches, sample_images, whitening_filters
from budgetnet.models.zoo import model_spec
from budgetnet.training import engine, lookahead, optim, schedule
from budgetnet.training.augment import DeviceBatches, altflip_base, altflip_mask, random_crop
from budgetnet.training.config import TrainConfig, recipe_config
from budgetnet.training.muon import Muon, orthogonalize
from budgetnet.training.objective import Objective

from conftest import REPO

FAST = recipe_config("fast")
NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "test")


def smooth_images(count: int, seed: int = 0) -> torch.Tensor:
    """Correlated float images (neighbouring pixels alike), as real photographs are."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, 3, 34, 34, generator=g)
    return torch.nn.functional.avg_pool2d(noise, 3, 1)  # (count, 3, 32, 32)


def test_whitened_patches_have_identity_covariance():
    images = smooth_images(64)
    filters = whitening_filters(images, kernel=2, eps=1e-9)
    assert filters.shape == (24, 3, 2, 2)
    assert torch.allclose(filters[12:], -filters[:12])  # each eigenvector with its negation
    flat = patches(images, 2).float()
    whitened = flat @ filters[:12].reshape(12, -1).T
    covariance = whitened.T @ whitened / len(whitened)
    assert torch.allclose(covariance, torch.eye(12), atol=2e-3)
    # With the default eps the directions keep their order and shrink by lambda / (lambda + eps)
    scaled = flat @ whitening_filters(images, kernel=2)[:12].reshape(12, -1).T
    variances = (scaled.T @ scaled / len(scaled)).diagonal()
    assert (variances <= 1 + 1e-4).all() and variances[0] > 0.99


def test_init_whitening_sets_the_stem_from_uint8_images():
    spec = model_spec("fastres_s")
    model = build(spec)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    model.stem.conv.bias.data.fill_(1.0)
    init_whitening(model.stem.conv, images, NORM)
    assert not model.stem.conv.weight.requires_grad and model.stem.conv.bias.requires_grad
    assert (model.stem.conv.bias == 0).all()
    x = normalize(torch.from_numpy(images).permute(0, 3, 1, 2), NORM)
    out = torch.nn.functional.conv2d(x, model.stem.conv.weight[:12])
    per_channel = out.permute(1, 0, 2, 3).reshape(12, -1)
    assert torch.allclose(per_channel.var(1), torch.ones(12), atol=0.05)


def test_whitening_sample_is_seeded_and_spans_the_split():
    index = np.arange(12000)  # image folders come sorted by class: the first 5,000 are airplanes
    sample = sample_images(index, seed=1)
    assert len(sample) == 5000 and np.array_equal(sample, sample_images(index, seed=1))
    assert not np.array_equal(sample, sample_images(index, seed=2))
    assert sample.max() > 11000 and (np.diff(sample) > 0).all()
    assert len(sample_images(index[:100], seed=1)) == 100


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


def test_linear_schedule_at_exact_steps():
    config = FAST.with_values(epochs=10, warmup_epochs=2.3)
    model = build(model_spec("fastres_s"))
    optimizer = optim.make_optimizer(config, model)
    set_lr = schedule.make_schedule(config, optimizer, steps_per_epoch=48)
    peak = config.optimizer.effective_lr
    assert set_lr(0) == pytest.approx(0.2 * peak)  # airbench's triangle starts at 0.2
    assert set_lr(110) == pytest.approx(peak)  # round(2.3 * 48): the peak
    assert set_lr(55) == pytest.approx((0.2 + 0.8 * 55 / 110) * peak)
    assert set_lr(480) == pytest.approx(0.07 * peak)  # the end
    assert set_lr(295) == pytest.approx((1 - 0.93 * 185 / 370) * peak)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(64 * set_lr(295))


def test_lookahead_pulls_every_k_steps_with_a_ramped_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(0.0)
    averaging = lookahead.Lookahead(model, every=5, final_decay=0.5, total_steps=10)
    for step in range(1, 11):
        model.weight.data += 1.0  # one "optimizer step"
        before = model.weight.item()
        averaging.after_step(model, step)
        if step == 5:
            decay = 0.5 * (5 / 10) ** 3
            assert lookahead.decay_at(5, 10, 0.5) == pytest.approx(decay)
            assert model.weight.item() == pytest.approx((1 - decay) * 5.0)  # slow was 0
        elif step != 10:
            assert model.weight.item() == before  # untouched between pulls
    slow_at_5 = (1 - 0.5 / 8) * 5.0
    fast_at_10 = slow_at_5 + 5.0
    expected = 0.5 * slow_at_5 + 0.5 * fast_at_10  # decay 0.5 at the last step, then kept
    assert model.weight.item() == pytest.approx(expected)
    assert averaging.state_dict()["weight"].item() == pytest.approx(expected)


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    index = torch.arange(1000)
    base = altflip_base(3, 1000)
    even, odd = altflip_mask(base, 0, index), altflip_mask(base, 1, index)
    assert (even ^ odd).all() and 400 < int(even.sum()) < 600
    assert torch.equal(even, altflip_mask(base, 2, index))  # the same half again
    assert not torch.equal(even, altflip_mask(altflip_base(4, 1000), 0, index))  # seeded
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    config = TrainConfig().with_values(
        batch_size=64, crop_padding=0, altflip=True, aa=None, reprob=0
    )
    batches = DeviceBatches(images, np.zeros(64, dtype=np.int64), config, torch.device("cpu"))
    (x0, _), (x1, _) = next(iter(batches.epoch(0))), next(iter(batches.epoch(1)))
    order0, order1 = batches.order(0), batches.order(1)
    source = torch.from_numpy(images).permute(0, 3, 1, 2)
    for k in range(5):
        i = int(order0[k])
        j = int((order1 == i).nonzero())
        flipped0 = torch.equal(x0[k], source[i].flip(-1))
        assert torch.equal(x0[k], source[i].flip(-1) if flipped0 else source[i])
        assert torch.equal(x1[j], source[i] if flipped0 else source[i].flip(-1))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_flip_mask_drawn_once_equals_the_per_batch_draw_in_every_epoch(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    config = TrainConfig().with_values(batch_size=50, altflip=True, aa=None, reprob=0, seed=7)
    images, labels = np.zeros((1000, 4, 4, 3), np.uint8), np.zeros(1000, np.int64)
    batches = DeviceBatches(images, labels, config, torch.device(device))
    drawn = torch.rand(1000, generator=torch.Generator().manual_seed(7 + 0x5EED)) < 0.5
    for epoch in range(5):
        index = batches.order(epoch)
        per_batch = drawn[index] ^ bool(epoch % 2)  # what every batch used to redraw
        got = altflip_mask(batches.flip_base, epoch, index)
        assert got.device.type == device and torch.equal(got.cpu(), per_batch)


def test_normalize_with_cached_statistics_equals_the_formula_bit_for_bit():
    batch = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 8, 8), np.uint8))
    other = Normalization((0.1, 0.2, 0.3), (0.3, 0.2, 0.1), "other")
    for norm in (NORM, other, NORM):  # the second NORM comes from the cache
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (norm.mean, norm.std))
        assert torch.equal(normalize(batch, norm), (batch.float() / 255.0 - mean) / std)


def test_reflect_translation_matches_torchvision():
    from torchvision.transforms import functional as TF

    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, gen, "reflect")
    padded = TF.pad(x, [2, 2, 2, 2], padding_mode="reflect")
    for k in range(8):  # each output is some 32x32 window of the reflect-padded image
        windows = [padded[k, :, dy : dy + 32, dx : dx + 32] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[k], w) for w in windows)


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
    from budgetnet.training.augment import BatchAugment

    augment = BatchAugment(config, NORM, 10, 32, torch.device("cpu"))
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


def test_bf16_is_used_only_where_the_hardware_has_it(monkeypatch):
    cpu = torch.device("cpu")
    assert isinstance(runtime.bf16_native("cpu"), bool)
    monkeypatch.setattr(runtime, "bf16_native", lambda kind: False)
    assert runtime.amp_dtype(cpu) is None
    with runtime.autocast(cpu, True):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setattr(runtime, "bf16_native", lambda kind: True)
    assert runtime.amp_dtype(cpu) == torch.bfloat16 and runtime.amp_dtype(cpu, False) is None
    with runtime.autocast(cpu, True):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16


def test_configure_cpu_sets_threads_and_reports_the_allocator():
    line = runtime.configure_cpu(threads=1, allocator=False)
    assert torch.get_num_threads() == 1 and line == "1 CPU thread"
    line = runtime.configure_cpu(threads=0)
    assert torch.get_num_threads() == runtime.cpu_count()
    assert ("heap reuse" in line) == runtime.tune_allocator()


def test_fast_spec_refuses_bad_fields_and_strides_every_stage():
    from budgetnet.errors import UserError

    with pytest.raises(UserError, match="24 channels"):
        ResNetSpec((1,), (8,), stem="whiten", stem_channels=16)
    with pytest.raises(UserError, match="logit_scale"):
        ResNetSpec((1,), (8,), logit_scale=0)
    with pytest.raises(UserError, match="bn_momentum"):
        ResNetSpec((1,), (8,), bn_momentum=1.5)
    spec = ResNetSpec((1, 1), (8, 16), block="fast", stem="whiten", pool_type="max")
    assert spec.stage_strides == (2, 2) and spec.plan.stages[-1][-1].out_size == 7


def test_airbench_adapter_runs_the_package_on_the_cpu(tmp_path):
    """The benchmark's airbench process: package unmodified, device and precision adapted
    (in a new process: adapt_to_cpu patches torch and torch.cuda for the whole process)."""
    pytest.importorskip("airbench")
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    (tmp_path / "cifar10").mkdir()
    torch.save(
        {"images": images, "labels": torch.arange(64) % 10, "classes": list("abcdefghij")},
        tmp_path / "cifar10" / "train.pt",
    )
    code = f"""
import json, sys, torch
sys.path.insert(0, {str(REPO / "benchmarks")!r})
import airbench_cpu
airbench_cpu.adapt_to_cpu()
import airbench, os
os.chdir({str(tmp_path)!r})
net = airbench.make_net94()
loader = airbench.CifarLoader("cifar10", train=True, batch_size=32, aug=dict(flip=True, translate=2))
x, y = next(iter(loader))
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record(); out = net(x); end.record(); torch.cuda.synchronize()
print(json.dumps({{"dtype": str(next(net.parameters()).dtype), "device": str(x.device),
    "shape": list(out.shape), "params": sum(p.numel() for p in net.parameters()),
    "ms": start.elapsed_time(end), "timed": len(airbench_cpu.INTERVALS)}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["dtype"] == "torch.float32" and row["device"] == "cpu"
    assert row["shape"] == [32, 10] and row["ms"] > 0 and row["timed"] == 1
    ours = build(model_spec("fastres_s"))  # the same layers plus identity shortcuts
    assert row["params"] == sum(p.numel() for p in ours.parameters())


def test_airbench_adapter_autocasts_each_forward_so_every_step_sees_new_weights():
    """One autocast region around all of airbench's train() ran every step on the first step's
    bf16 weights (autocast caches its casts until the region exits): the benchmark's airbench
    reached 10%. The adapter opens a region per forward pass instead."""
    pytest.importorskip("airbench")
    code = f"""
import json, sys, torch
sys.path.insert(0, {str(REPO / "benchmarks")!r})
import airbench_cpu
airbench_cpu.adapt_to_cpu()
import airbench
net = airbench_cpu.autocast_net(airbench.make_net94)()
seen = []
net[2].conv1.register_forward_hook(lambda m, i, o: seen.append(str(o.dtype)))
x = torch.randn(4, 3, 32, 32)
before = net(x)
with torch.no_grad():
    net[2].conv1.weight.mul_(-1)
after = net(x)
print(json.dumps({{"out": str(before.dtype), "conv": seen, "changed": not torch.equal(before, after),
    "indexed": type(net[0]).__name__}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row == {
        "out": "torch.float32", "conv": ["torch.bfloat16"] * 2, "changed": True, "indexed": "Conv",
    }  # fmt: skip


def test_benchmark_refuses_a_row_near_chance(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cpu_vs_airbench

    log = (tmp_path / "log").open("w")
    row = {"system": "airbench94", "seed": 0, "test_acc_tta2": 0.1}
    with pytest.raises(SystemExit, match="airbench94 seed 0 reached 10.00% .* near chance"):
        cpu_vs_airbench.checked(row, log)
    assert cpu_vs_airbench.checked({**row, "test_acc_tta2": 0.9}, log)["test_acc_tta2"] == 0.9


def test_recipes_table_gives_each_system_its_columns_and_time_ratio():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import recipes

    common = {"precision": "float32", "params": 10, "flops": 2e6, "test_acc_tta0": 0.8}
    peer = {**common, "system": "airbench94", "epochs": 9.9, "test_acc_tta2": 0.9}
    ours = {
        **common, "system": "budgetnet fast", "epochs": 10, "val_acc": 0.88,
        "test_acc_tta2": 0.91, "corruption_mean": 0.7,
        **{name: 0.5 for name in recipes.NOISES},
    }  # fmt: skip
    rows = [
        {**ours, "seed": 0, "train_seconds": 50.0}, {**ours, "seed": 1, "train_seconds": 70.0},
        {**peer, "seed": 0, "train_seconds": 120.0}, {**peer, "seed": 1, "train_seconds": 120.0},
    ]  # fmt: skip
    lines = recipes.summarise(rows, "airbench94").splitlines()
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in lines[2:]
    }
    assert list(cells) == ["airbench94", "budgetnet fast"]  # the reference first
    assert cells["airbench94"][3] == "—" and cells["airbench94"][-1] == "1.00"
    assert cells["budgetnet fast"][3] == "88.00 ± 0.00" and cells["budgetnet fast"][-1] == "0.50"
    assert cells["budgetnet fast"][5] == "91.00 ± 0.00"
    recipes.time_figure(rows)  # draws without a display


def test_recipes_resume_runs_only_missing_pairs_and_keeps_every_finished_row(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import recipes

    trained = []
    common = {"precision": "float32", "params": 10, "flops": 2e6, "epochs": 1, "val_acc": 0.5}

    def fake_row(system, seed):
        trained.append((system, seed))
        if len(trained) == 3:
            raise KeyboardInterrupt  # the benchmark stops during its third run
        return {**common, "system": system, "seed": seed, "train_seconds": 10.0 + seed,
                "test_acc_tta0": 0.6, "test_acc_tta2": 0.7}  # fmt: skip

    monkeypatch.setattr(recipes, "write_airbench_data", lambda data, workdir: None)
    monkeypatch.setattr(recipes, "load_split", lambda data, split: None)
    monkeypatch.setattr(recipes, "preset_row", lambda p, s, *a: fake_row(f"budgetnet {p}", s))
    monkeypatch.setattr(recipes, "airbench_run", lambda v, s, *a: fake_row(f"airbench{v}", s))
    out = tmp_path / "bench" / "recipes"
    argv = ["recipes.py", "--presets", "fast", "--seeds", "0", "1", "--out", str(out), "--resume"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(KeyboardInterrupt):
        recipes.main()
    kept = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["system"], r["seed"]) for r in kept] == [("budgetnet fast", 0), ("airbench94", 0)]
    assert (
        "budgetnet fast" in out.with_suffix(".md").read_text()
        and out.with_suffix(".png").stat().st_size
    )

    trained.clear()
    recipes.main()  # resumed: only seed 1's pairs run
    assert trained == [("budgetnet fast", 1), ("airbench94", 1)]
    assert len(json.loads(out.with_suffix(".json").read_text())["rows"]) == 4
