"""Knowledge distillation (budgetnet.training.objective): the loss by hand, the teacher frozen
and in its own normalisation, teachers of other classes or sizes refused, and a tiny run."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from budgetnet.errors import UserError
from budgetnet.training import engine
from budgetnet.training.config import TrainConfig, merge
from budgetnet.training.objective import Objective, Teacher, kd_loss

from cifar_files import CIFAR10_CLASSES
from tiny import NORM, TINY_SPEC, save_random_release, tiny_config, tiny_release_run

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


def test_bad_distillation_settings_are_refused():
    for bad in ({"kd_alpha": 1.5}, {"teacher": []}):
        with pytest.raises(UserError):
            merge(TrainConfig(), bad, "test")


@pytest.mark.slow
def test_a_tiny_distilled_run_releases_a_working_model(cifar, tmp_path, teachers):
    tiny_release_run(cifar, tmp_path, kd_alpha=0.5, kd_temperature=2.0, teacher=teachers)
