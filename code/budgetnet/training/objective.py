"""What a training step minimises: the task loss, and knowledge distillation from a teacher.

    task        label-smoothed cross-entropy; soft-target cross-entropy under Mixup/CutMix (timm's
                Mixup has already smoothed the targets); with --jsd-loss, timm's Jensen-Shannon
                consistency loss over the clean and two AugMix views (AugMix, Hendrycks 2020)
    distilled   (1 - kd_alpha) * task + kd_alpha * T^2 * KL(teacher_T || student_T), where x_T is
                softmax(logits / T) at T = kd_temperature (Hinton 2015; T^2 keeps the gradient's
                scale as T changes). An ensemble teacher's probabilities are the mean of its
                members' tempered probabilities.

The teacher sees the very batch the student sees (augmented, and mixed under Mixup/CutMix, so its
soft targets mix the same way), in eval mode, without gradients, under bf16 autocast where the
device computes bf16 natively.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from budgetnet.data.normalization import Normalization
from budgetnet.errors import UserError, shorten
from budgetnet.evaluation.ensemble import Ensemble, load_ensemble
from budgetnet.runtime import autocast
from budgetnet.training.config import JSD_SPLITS, TrainConfig


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float):
    """T^2 * KL(teacher || student), both at temperature T; mean over the batch."""
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    kl = F.kl_div(log_student, teacher_probs, reduction="batchmean")
    return kl * temperature**2


class Teacher:
    """Trained models (one, or an ensemble of any size) whose tempered probabilities the student
    learns; inputs arrive normalised for the student and are renormalised for each member."""

    def __init__(
        self,
        paths: Sequence[str],
        student: Normalization,
        temperature: float,
        device: torch.device,
        amp: bool,
        *,
        classes: Sequence[str] | None = None,
        input_size: int | None = None,
    ) -> None:
        """`classes` and `input_size`: the student's, checked against every member's (None:
        not checked, for teachers built by hand)."""
        self.ensemble = load_ensemble(list(paths), device, max_params=0)  # a teacher may be big
        _check_members(self.ensemble, classes, input_size)
        self.temperature, self.device, self.amp = temperature, device, amp
        for release in self.ensemble.releases:
            release.model.eval().requires_grad_(False)
        # Per member, once: the affine map from the student's normalisation to its own.
        self.renormalise = [
            _affine(student, r.normalization, device) for r in self.ensemble.releases
        ]

    @torch.no_grad()
    def probs(self, inputs: torch.Tensor) -> torch.Tensor:
        """(N, classes) float32: the mean of the members' probabilities at the temperature."""
        total = 0
        for release, (scale, shift) in zip(self.ensemble.releases, self.renormalise, strict=True):
            x = inputs if scale is None else inputs * scale + shift
            with autocast(self.device, self.amp):
                logits = release.model(x).float()
            total = total + F.softmax(logits / self.temperature, dim=-1)
        return total / len(self.ensemble.releases)


def _check_members(ensemble: Ensemble, classes: Sequence[str] | None, size: int | None) -> None:
    """Soft targets are matched to the student's logits by position, and members get the
    student's inputs as they are (not resized): both must agree."""
    if classes is not None and list(ensemble.classes) != list(classes):
        raise UserError(
            f"teacher classes {shorten(str(ensemble.classes))} differ from the training data's "
            f"{shorten(str(list(classes)))}; a teacher must label the same classes, in order"
        )
    for release in ensemble.releases:
        own = release.model.spec.input_size
        if size is not None and own != size:
            raise UserError(
                f"{release.path}: teacher input size {own} px differs from the student's {size} "
                "px; distil from a teacher trained at the student's input size"
            )


def _affine(source: Normalization, target: Normalization, device: torch.device) -> tuple:
    """(scale, shift) with x_target = x_source * scale + shift; (None, None) when they agree."""
    if source.mean == target.mean and source.std == target.std:
        return None, None
    mean_s, std_s, mean_t, std_t = (
        torch.tensor(v, device=device).view(1, 3, 1, 1)
        for v in (source.mean, source.std, target.mean, target.std)
    )
    return std_s / std_t, (mean_s - mean_t) / std_t


class Objective:
    """The loss of one batch: `objective(logits, target, inputs)`."""

    def __init__(self, config: TrainConfig, teacher: Teacher | None = None) -> None:
        self.task = _task_loss(config)
        self.teacher, self.alpha = teacher, config.distill.kd_alpha

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, inputs: torch.Tensor
    ) -> torch.Tensor:
        loss = self.task(logits, target)
        if self.teacher is None:
            return loss
        soft = kd_loss(logits, self.teacher.probs(inputs), self.teacher.temperature)
        return (1 - self.alpha) * loss + self.alpha * soft


def _task_loss(config: TrainConfig) -> nn.Module:
    if config.loss.jsd_loss:
        from timm.loss import JsdCrossEntropy

        return JsdCrossEntropy(num_splits=JSD_SPLITS, smoothing=config.loss.smoothing)
    if config.augment.mixes:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=config.loss.smoothing)
