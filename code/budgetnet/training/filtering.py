"""Data filtering (airbench96_faster, Jordan 2024): train on the hard part of each batch.

A proxy network (a registered model far smaller than the trained one, `filter_proxy`) sees every
augmented batch the model would see. Its per-image loss ranks the batch, and the model steps on
the `filter_keep` share it finds hardest, so a model step costs about that share of a full one:
easy images, which the proxy already gets right, teach little. The proxy trains beside the model,
on the images it kept, in one step of every `filter_every` (a forward pass is all the other steps
cost), with the model's optimizer settings and learning-rate schedule; its whitening stem is
initialised from the training images and its bias is frozen.

Both losses are sums over the kept images divided by the whole batch (airbench96_faster's
scaling): each kept image pulls on the weights as hard as in an unfiltered batch, and the
learning rate keeps its units. The proxy never depends on the model, so its choices equal those
of airbench96_faster's proxy run made in advance; doing it online keeps resume exact with one
more state in last.pt.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from budgetnet.data.sources import DataSplits
from budgetnet.errors import UserError
from budgetnet.models.builder import build
from budgetnet.models.whitening import init_model, whitened_stem
from budgetnet.models.zoo import model_spec
from budgetnet.runtime import autocast
from budgetnet.training.config import TrainConfig
from budgetnet.training.optim import make_optimizer
from budgetnet.training.schedule import make_schedule


def example_losses(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Each image's cross-entropy in float32: label-smoothed for class labels, against the soft
    targets as given (Mixup/CutMix have smoothed them already)."""
    logits = logits.float()
    if target.is_floating_point():
        return -(target * F.log_softmax(logits, dim=-1)).sum(-1)
    return F.cross_entropy(logits, target, label_smoothing=smoothing, reduction="none")


def kept_count(keep: float, batch: int) -> int:
    """How many of `batch` images the model trains on: at least 2, for BatchNorm's statistics."""
    return min(batch, max(2, round(keep * batch)))


class DataFilter:
    """The proxy, its optimizer and schedule; `select` ranks a batch and picks the model's part."""

    def __init__(
        self,
        config: TrainConfig,
        splits: DataSplits,
        num_classes: int,
        input_size: int,
        device: torch.device,
        steps_per_epoch: int,
    ) -> None:
        filtering = config.filtering
        spec = replace(
            model_spec(filtering.filter_proxy), num_classes=num_classes, input_size=input_size
        )
        if spec.stem != "whiten":
            raise UserError(f"filter_proxy {filtering.filter_proxy} needs a whitening stem")
        proxy = build(spec)
        self.init_seconds = init_model(proxy, spec, splits, config.runtime.seed)  # training time
        whitened_stem(proxy, spec).bias.requires_grad_(False)
        memory = torch.channels_last if config.runtime.channels_last else torch.contiguous_format
        self.proxy = proxy.to(device, memory_format=memory).train()
        self.optimizer = make_optimizer(config, self.proxy)
        self.set_lr = make_schedule(config, self.optimizer, steps_per_epoch)
        self.keep, self.every = filtering.filter_keep, filtering.filter_every
        self.smoothing, self.device, self.amp = config.loss.smoothing, device, config.runtime.amp

    def select(self, x: torch.Tensor, target: torch.Tensor, step: int) -> torch.Tensor:
        """The indices (ascending) of the `filter_keep` share of the batch with the highest
        proxy loss; on one step in `filter_every`, the proxy also steps on them."""
        learns = step % self.every == 0
        with torch.set_grad_enabled(learns), autocast(self.device, self.amp):
            logits = self.proxy(x)
        losses = example_losses(logits, target, self.smoothing)
        kept = losses.detach().topk(kept_count(self.keep, len(x))).indices.sort().values
        if learns:
            self.set_lr(step)
            self.optimizer.zero_grad(set_to_none=True)
            (losses[kept].sum() / len(x)).backward()
            self.optimizer.step()
        return kept

    def state_dict(self) -> dict:
        return {"proxy": self.proxy.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.proxy.load_state_dict(state["proxy"])
        self.optimizer.load_state_dict(state["optimizer"])


def make_filter(
    config: TrainConfig, splits: DataSplits, num_classes: int, input_size: int,
    device: torch.device, steps_per_epoch: int,
) -> DataFilter | None:  # fmt: skip
    """The run's DataFilter, or None when filter_keep is 1."""
    if not config.filtering.active:
        return None
    return DataFilter(config, splits, num_classes, input_size, device, steps_per_epoch)
