"""Distillation, stochastic weight averaging and the shift-robust augmentations: the loss by
hand, the teacher frozen, SWA's average and BatchNorm update, AugMix/JSD batches, and a tiny run
with each flag."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from budgetnet.errors import UserError
from budgetnet.models import checkpoint
from budgetnet.models.spec import ResNetSpec
from budgetnet.training import engine
from budgetnet.training.augment import BatchAugment, WorkerBatches, auto_augment
from budgetnet.training.config import JSD_SPLITS, TrainConfig, merge
from budgetnet.training.objective import Objective, Teacher, kd_loss
from budgetnet.training.schedule import make_schedule, swa_start_epoch
from budgetnet.training.swa import WeightAverage

from cifar_files import CIFAR10_CLASSES, random_images
from tiny import NORM, TINY_SPEC, save_random_release, tiny_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers")
    return [str(save_random_release(folder / f"t{seed}", seed)) for seed in (1, 2)]


def test_kd_loss_equals_the_tempered_kl_by_hand():
    student = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.7, 0.2, 0.1]])
    t = 3.0
    q = [math.exp(v / t) for v in (2.0, 0.0, -1.0)]
    log_q = [math.log(v / sum(q)) for v in q]
    kl = sum(p * (math.log(p) - lq) for p, lq in zip((0.7, 0.2, 0.1), log_q, strict=True))
    assert kd_loss(student, teacher, t).item() == pytest.approx(t * t * kl, rel=1e-6)
    assert kd_loss(student, torch.softmax(student / t, -1), t).item() == pytest.approx(0, abs=1e-6)


def test_teacher_is_frozen_in_eval_mode_and_averages_tempered_members(teachers):
    teacher = Teacher(teachers, NORM, temperature=2.0, device=CPU, amp=False)
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    probs = teacher.probs(x)
    assert not probs.requires_grad and probs.shape == (4, 10)
    for release in teacher.ensemble.releases:
        assert not release.model.training
        assert not any(p.requires_grad for p in release.model.parameters())
    members = [torch.softmax(r.model(x).detach() / 2.0, -1) for r in teacher.ensemble.releases]
    torch.testing.assert_close(probs, sum(members) / 2)


def test_teacher_gets_inputs_in_its_own_normalisation(teachers):
    from budgetnet.data.normalization import Normalization

    student = Normalization((0.4, 0.3, 0.2), (0.2, 0.3, 0.4), "student")
    teacher = Teacher(teachers[:1], student, temperature=1.0, device=CPU, amp=False)
    x = torch.randn(2, 3, 32, 32)
    mean_s, std_s, mean_t, std_t = (
        torch.tensor(v).view(1, 3, 1, 1) for v in (student.mean, student.std, NORM.mean, NORM.std)
    )
    own = (x * std_s + mean_s - mean_t) / std_t  # the same pixels, as the teacher was trained
    expected = torch.softmax(teacher.ensemble.releases[0].model(own).detach(), -1)
    torch.testing.assert_close(teacher.probs(x), expected)


def test_distilled_objective_mixes_labels_and_teacher_by_kd_alpha(teachers):
    config = TrainConfig().with_values(
        teacher=teachers, kd_alpha=0.25, kd_temperature=2.0, smoothing=0.0
    )
    teacher = Teacher(teachers, NORM, 2.0, CPU, amp=False)
    logits, labels, x = torch.randn(4, 10), torch.arange(4), torch.randn(4, 3, 32, 32)
    expected = 0.75 * nn.functional.cross_entropy(logits, labels)
    expected += 0.25 * kd_loss(logits, teacher.probs(x), 2.0)
    got = Objective(config, teacher)(logits, labels, x)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_teacher_of_other_classes_or_another_order_is_refused(cifar, tmp_path):
    hundred = save_random_release(
        tmp_path / "t100", 3, [f"c{i}" for i in range(100)], replace(TINY_SPEC, num_classes=100)
    )
    reordered = save_random_release(tmp_path / "reordered", 3, CIFAR10_CLASSES[::-1])
    for teacher in (hundred, reordered):
        config = tiny_config(cifar, tmp_path, teacher=[str(teacher)], kd_alpha=0.5)
        with pytest.raises(UserError, match=r"teacher classes \[.* differ from the training data"):
            engine.setup(config, TINY_SPEC, log=lambda line: None)


def test_a_teacher_of_another_input_size_is_refused(cifar, tmp_path):
    teacher = save_random_release(tmp_path / "t64", 3, spec=replace(TINY_SPEC, input_size=64))
    config = tiny_config(cifar, tmp_path, teacher=[str(teacher)], kd_alpha=0.5)
    with pytest.raises(UserError, match="teacher input size 64 px differs from the student's 32"):
        engine.setup(config, TINY_SPEC, log=lambda line: None)


def test_weight_average_is_the_mean_of_epoch_weights_and_bn_is_recomputed():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    config = TrainConfig().with_values(epochs=4, swa=True, swa_start=0.5)
    assert swa_start_epoch(config) == 2
    average = WeightAverage(model, config)
    snapshots = []
    for epoch in range(4):
        with torch.no_grad():
            model[0].weight.fill_(float(epoch))
        average.after_epoch(model, epoch)
        snapshots.append(float(epoch))
    assert average.count == 2
    inputs = [torch.randn(8, 3, 5, 5) + 3 for _ in range(3)]
    averaged = average.finish(iter(inputs), CPU)
    assert torch.allclose(averaged[0].weight, torch.full_like(averaged[0].weight, 2.5))
    features = torch.cat([averaged[0](x) for x in inputs]).detach()
    expected_mean = features.mean(dim=(0, 2, 3))
    torch.testing.assert_close(averaged[1].running_mean, expected_mean, rtol=1e-4, atol=1e-4)
    assert not averaged.training


def test_swa_lr_holds_from_the_start_epoch_with_each_group_ratio():
    config = TrainConfig().with_values(
        epochs=4, sched="cosine", warmup_epochs=0, swa=True, swa_lr=0.05
    )
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(
        [{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.4}], lr=0.1
    )
    set_lr = make_schedule(config, optimizer, steps_per_epoch=10)
    assert set_lr(29) < 0.1 and set_lr(29) != pytest.approx(0.05)  # still cosine before epoch 3
    assert set_lr(30) == pytest.approx(0.05) and set_lr(39) == pytest.approx(0.05)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.2)


@pytest.mark.parametrize(
    "policy", ["rand-m9-n2", "augmix-m3-w3", "trivialaugment", "autoaugment-cifar10"]
)
def test_every_aa_policy_transforms_a_32px_image(policy):
    image = Image.fromarray(random_images(1, seed=4)[0])
    out = auto_augment(policy, 32)(image)
    assert out.size == (32, 32) and out.mode == "RGB"


def test_bad_aa_and_jsd_combinations_are_refused():
    for bad in (
        {"aa": "randaugment"},
        {"jsd_loss": True, "aa": "rand-m9-n2"},
        {"jsd_loss": True, "aa": "augmix-m3", "mixup": 0.2},
        {"kd_alpha": 1.5},
        {"swa_start": 1.0},
        {"teacher": []},
    ):
        with pytest.raises(UserError):
            merge(TrainConfig(), bad, "test")


def test_jsd_batches_hold_the_clean_views_first_and_the_loss_takes_them():
    config = TrainConfig().with_values(
        aa="augmix-m3-w2", jsd_loss=True, batch_size=4, workers=0, reprob=0.5
    )
    images, labels = random_images(8, seed=5), np.arange(8) % 10
    batches = WorkerBatches(images, labels, config, CPU)
    x, y = next(iter(batches.epoch(0)))
    assert x.shape == (JSD_SPLITS * 4, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (4,)
    augment = BatchAugment(config, NORM, 10, 32, CPU)
    inputs, target = augment(x, y)
    assert inputs.shape == x.shape and torch.equal(target, y)
    loss = Objective(config)(torch.randn(JSD_SPLITS * 4, 10), target, inputs)
    assert torch.isfinite(loss)


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [
        {"swa": True, "swa_start": 0.5, "swa_lr": 0.05},
        {"aa": "augmix-m3-w2", "jsd_loss": True, "workers": 0},
        {"kd_alpha": 0.5, "kd_temperature": 2.0},
    ],
    ids=["swa", "augmix-jsd", "distillation"],
)
def test_a_tiny_run_with_each_technique_releases_a_working_model(cifar, tmp_path, teachers, flags):
    if "kd_alpha" in flags:
        flags = {**flags, "teacher": teachers}
    config = tiny_config(cifar, tmp_path, epochs=2, warmup_epochs=0.5, tta=0, **flags)
    results = engine.fit(config, TINY_SPEC, log=lambda line: None)
    assert 0 <= results["test_acc_tta0"] <= 1 and math.isfinite(results["val_acc"])
    meta = json.loads((tmp_path / "run" / "best" / "model.json").read_text())
    if config.averaging.swa:
        assert meta["metrics"]["swa_epochs"] == 1  # epoch 2 of 2
    saved = meta["provenance"]["config"]
    assert all(saved[key] == value for key, value in flags.items())


def _released_weights_equal(run, state: dict) -> bool:
    """Whether the release in `run` holds `state` (as the float16 release stores it)."""
    released = checkpoint.load_release(run).model.state_dict()
    return all(
        torch.equal(released[k], v.half().float() if v.is_floating_point() else v)
        for k, v in state.items()
    )


def test_swa_that_never_started_leaves_the_best_epochs_release(cifar, tmp_path, monkeypatch):
    saved, save_release = [], engine._save_release

    def recording(s, model, scores, run_dir, record):
        saved.append((scores, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        save_release(s, model, scores, run_dir, record)

    monkeypatch.setattr(engine, "_save_release", recording)
    # No epoch can gain a whole 100%: patience ends the run after 2 of 20 epochs, long before
    # the average would start (epoch 10).
    config = tiny_config(
        cifar, tmp_path, epochs=20, warmup_epochs=0, patience=1, min_delta=1.0, swa=True,
        swa_start=0.5, tta=0,
    )  # fmt: skip
    lines = []
    results = engine.fit(config, ResNetSpec((1,), (8,)), log=lines.append)
    assert results["epochs_run"] == 2
    assert "SWA: no epoch reached --swa-start; the best epoch's release stays" in lines
    meta = json.loads((tmp_path / "run" / "best" / "model.json").read_text())
    assert "swa_epochs" not in meta["metrics"] and meta["metrics"]["epoch"] == 1
    assert [scores["epoch"] for scores, _ in saved] == [1]
    assert _released_weights_equal(tmp_path / "run", saved[0][1])


class _Interrupted(Exception):
    pass


@pytest.mark.slow
def test_a_resumed_swa_run_carries_on_the_saved_average(cifar, tmp_path, monkeypatch):
    # The average takes both epochs; the interrupted run stops after the first with one epoch
    # averaged, which the resumed run must carry on from its last.pt.
    flags = dict(epochs=2, warmup_epochs=0.5, swa=True, swa_start=0.0, tta=0)
    engine.fit(tiny_config(cifar, tmp_path / "a", **flags), TINY_SPEC, log=lambda line: None)
    end_epoch = engine.end_epoch

    def end_then_stop(s, progress, row, *rest):
        stop = end_epoch(s, progress, row, *rest)
        if row["epoch"] == 0:
            assert s.average.count == 1
            raise _Interrupted
        return stop

    monkeypatch.setattr(engine, "end_epoch", end_then_stop)
    config = tiny_config(cifar, tmp_path / "b", **flags)
    with pytest.raises(_Interrupted):
        engine.fit(config, TINY_SPEC, log=lambda line: None)
    monkeypatch.setattr(engine, "end_epoch", end_epoch)
    engine.fit(config, TINY_SPEC, resume=tmp_path / "b" / "run", log=lambda line: None)
    a, b = (torch.load(tmp_path / x / "run" / "last.pt", weights_only=True) for x in "ab")
    assert int(a["swa"]["n_averaged"]) == int(b["swa"]["n_averaged"]) == 2
    for key, value in a["swa"].items():
        assert torch.equal(value, b["swa"][key]), key
    for run in (tmp_path / "a" / "run", tmp_path / "b" / "run"):
        meta = json.loads((run / "best" / "model.json").read_text())
        assert meta["metrics"]["swa_epochs"] == 2
    straight = checkpoint.load_release(tmp_path / "a" / "run").model.state_dict()
    assert _released_weights_equal(tmp_path / "b" / "run", straight)
