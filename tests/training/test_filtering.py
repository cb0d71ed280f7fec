"""Data filtering (--filter-keep): the proxy keeps exactly the hardest share of a batch and
steps on one batch in `filter_every`; the model trains on the kept images at their share of the
batch; a filtered run trains, records its settings and resumes exactly; bad settings are
refused in one line."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F

from budgetnet.errors import UserError
from budgetnet.models.builder import build
from budgetnet.runtime import autocast
from budgetnet.training import engine
from budgetnet.training.augment import BatchAugment
from budgetnet.training.config import TrainConfig
from budgetnet.training.filtering import DataFilter, example_losses, kept_count
from budgetnet.training.objective import Objective

from refusals import refused
from tiny import PREPROCESSING, TINY_SPEC, interrupted_and_resumed, tiny_config, tiny_release_run

CPU = torch.device("cpu")


def _filter(cifar, tmp_path, **settings) -> DataFilter:
    config = tiny_config(cifar, tmp_path, **settings)
    return DataFilter(config, engine.build_data(config), 10, 32, CPU, steps_per_epoch=5)


def _batch(count: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 3, 32, 32, generator=generator)
    return x.contiguous(memory_format=torch.channels_last), torch.arange(count) % 10


def _proxy_losses(data_filter: DataFilter, x, y) -> torch.Tensor:
    with torch.no_grad(), autocast(CPU, data_filter.amp):
        logits = data_filter.proxy(x)
    return example_losses(logits, y, data_filter.smoothing)


def _weights(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("keep,every", [(0.25, 3), (0.5, 1)])
def test_the_proxy_keeps_its_hardest_share_and_steps_once_in_every(cifar, tmp_path, keep, every):
    data_filter = _filter(
        cifar, tmp_path, filter_keep=keep, filter_every=every, smoothing=0.2, sched="constant"
    )
    x, y = _batch()
    for step in range(4):
        losses, before = _proxy_losses(data_filter, x, y), _weights(data_filter.proxy)
        kept = data_filter.select(x, y, step)
        assert len(kept) == round(keep * 16) and torch.equal(kept, kept.sort().values)
        threshold = losses[kept].min()
        assert (losses[kept] >= threshold).all()
        rest = torch.ones(16, dtype=torch.bool)
        rest[kept] = False
        assert (losses[rest] <= threshold).all()  # every image left out is easier
        after = _weights(data_filter.proxy)
        moved = any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
        assert moved == (step % every == 0), step
    assert not data_filter.proxy.stem.conv.bias.requires_grad  # airbench96_faster freezes it


def test_the_proxy_learns_the_labels_it_ranks_by(cifar, tmp_path):
    data_filter = _filter(
        cifar, tmp_path, filter_keep=0.5, filter_every=1, lr=0.05, sched="constant"
    )
    x, y = _batch(32, seed=1)
    first = _proxy_losses(data_filter, x, y).mean()
    for step in range(20):
        data_filter.select(x, y, step)
    assert _proxy_losses(data_filter, x, y).mean() < first


def test_example_losses_read_class_labels_smoothed_and_soft_targets_as_given():
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 3, 4, 9])
    smoothed = F.cross_entropy(logits, labels, label_smoothing=0.2, reduction="none")
    assert torch.allclose(example_losses(logits, labels, 0.2), smoothed)
    soft = torch.full((6, 10), 0.02).scatter(1, labels[:, None], 0.82)  # 0.2 smoothed by hand
    assert torch.allclose(example_losses(logits, soft, 0.9), smoothed, atol=1e-6)


@pytest.mark.parametrize("keep,batch,kept", [(0.5, 1024, 512), (0.01, 10, 2), (1.0, 7, 7)])
def test_kept_counts_leave_batchnorm_two_images_at_least(keep, batch, kept):
    assert kept_count(keep, batch) == kept


def test_a_filtered_step_trains_on_the_kept_images_at_their_share_of_the_batch(cifar, tmp_path):
    # every 4: steps 1-3 leave the proxy alone, so two selections on step 1 agree
    data_filter = _filter(cifar, tmp_path, filter_keep=0.25, filter_every=4, reprob=0)
    config = TrainConfig().with_values(reprob=0, smoothing=0.1)
    augment, objective = BatchAugment(config, PREPROCESSING, 10, CPU), Objective(config)
    torch.manual_seed(0)
    model = build(TINY_SPEC).to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(16) % 10
    sizes = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    step = engine.train_step(
        model, torch.optim.SGD(model.parameters(), lr=0.0), augment, objective, images, labels,
        CPU, False, data_filter=data_filter, step=1,
    )  # fmt: skip
    x, _ = augment(images, labels)
    kept = data_filter.select(x, labels, 1)
    assert sizes == [4] and torch.equal(step.labels, labels[kept])
    loss = objective(twin(x[kept]).float(), labels[kept], x[kept])
    assert torch.allclose(step.loss, loss)
    (loss * 4 / 16).backward()  # airbench96_faster's scaling: the sum over the whole batch
    for mine, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(mine.grad, theirs.grad, atol=1e-6)


def test_a_filtered_run_records_its_filter(cifar, tmp_path):
    meta = tiny_release_run(cifar, tmp_path, filter_keep=0.5, filter_every=2)
    assert meta["provenance"]["config"]["filter_proxy"] == "fastres_proxy"


@pytest.mark.slow
def test_a_resumed_filtered_run_ends_as_an_uninterrupted_one(cifar, tmp_path):
    flags = dict(epochs=2, warmup_epochs=0.5, tta=0, filter_keep=0.5, filter_every=2, amp=False)
    a, b = interrupted_and_resumed(cifar, tmp_path, flags)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["filter"]["proxy"].items():
        assert torch.equal(value, b["filter"]["proxy"][key]), key


@pytest.mark.parametrize(
    "settings,words",
    [
        ({"filter_keep": 0.0}, "filter_keep must be in (0, 1]"),
        ({"filter_keep": 1.5}, "filter_keep must be in (0, 1]"),
        ({"filter_keep": 0.5, "filter_proxy": "no_such_net"}, "unknown filter_proxy"),
        ({"filter_every": 0}, "filter_every must be at least 1"),
        (
            {"filter_keep": 0.5, "jsd_loss": True, "aa": "augmix-m3-w3", "altflip": False},
            "jsd_loss keeps an image's three views together",
        ),
    ],
)
def test_bad_filter_settings_are_refused_in_one_line(settings, words):
    refused(lambda: TrainConfig().with_values(**settings), re.escape(words))


def test_a_proxy_without_a_whitening_stem_is_refused(cifar, tmp_path):
    with pytest.raises(UserError, match="needs a whitening stem"):
        _filter(cifar, tmp_path, filter_keep=0.5, filter_proxy="resnet20")
