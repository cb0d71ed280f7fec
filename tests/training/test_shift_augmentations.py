"""The augmentations for shift robustness: the batch ones at exact values on seeded batches
(Gaussian noise: fraction and scale; RandomErasing: areas; Mixup: weights), progressive
resizing, the per-image policies (RandAugment, AugMix, TrivialAugment, AutoAugment) and
AugMix's Jensen-Shannon batches, with a tiny run."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from budgetnet.errors import UserError
from budgetnet.training.augment import BatchAugment, WorkerBatches, auto_augment, gaussian_noise
from budgetnet.training.config import JSD_SPLITS, TrainConfig, merge
from budgetnet.training.objective import Objective

from cifar_files import random_images
from tiny import NORM, PREPROCESSING, TINY_SPEC, tiny_config, tiny_release_run

CPU = torch.device("cpu")


def grey_batch(count: int = 40) -> torch.Tensor:
    return torch.full((count, 3, 32, 32), 128, dtype=torch.uint8)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """A normalised batch back in [0, 1] pixel units."""
    return x * 0.25 + 0.5  # NORM: mean 0.5, std 0.25


@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
def test_noise_reaches_exactly_its_fraction_of_the_batch_at_most_at_its_scale(fraction):
    torch.manual_seed(0)
    config = TrainConfig().with_values(reprob=0, noise_prob=fraction, noise_std=0.1)
    clean, _ = BatchAugment(TrainConfig().with_values(reprob=0), PREPROCESSING, 10, CPU)(
        grey_batch(), None
    )
    noisy, _ = BatchAugment(config, PREPROCESSING, 10, CPU)(grey_batch(), None)
    changed = (noisy != clean).flatten(1).any(1)
    assert changed.sum() == round(fraction * 40)
    assert torch.equal(noisy[~changed], clean[~changed])  # the rest stay clean
    residual = (pixels(noisy) - pixels(clean))[changed].flatten(1)
    spread = residual.std(1)  # the drawn sigma of each image (a grey image never clips here)
    assert spread.max() < 0.1 * 1.06 and spread.min() < 0.04  # U(0, 0.1): small and large
    assert residual.mean(1).abs().max() < 0.01  # zero-mean
    assert noisy.is_contiguous(memory_format=torch.channels_last)


def test_noise_is_clipped_to_the_valid_pixel_range_and_seeded():
    x = (torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)) - 0.5) / 0.25
    torch.manual_seed(3)
    first = gaussian_noise(x, 1.0, 1.0, NORM)
    torch.manual_seed(3)
    assert torch.equal(first, gaussian_noise(x, 1.0, 1.0, NORM))
    values = pixels(first)
    assert values.min() >= -1e-6 and values.max() <= 1 + 1e-6
    assert (values.isclose(torch.tensor(0.0), atol=1e-6)).any()  # strong noise hits the edges
    assert torch.equal(gaussian_noise(x, 0.0, 1.0, NORM), x)


def test_random_erasing_cuts_areas_within_timms_range():
    torch.manual_seed(0)
    config = TrainConfig().with_values(reprob=1.0, remode="const")
    x, _ = BatchAugment(config, PREPROCESSING, 10, CPU)(
        torch.full((64, 3, 32, 32), 200, dtype=torch.uint8), None
    )
    area = (x == 0).all(dim=1).flatten(1).float().mean(1)  # the mean colour is 0 after NORM
    assert (area >= 0.02 - 1 / 1024).all() and (area <= 1 / 3 + 1 / 32).all()
    assert area.std() > 0.02  # drawn per image


def test_mixup_blends_each_image_with_its_mirror_in_the_batch_by_one_weight():
    np.random.seed(0)  # timm draws the weight with NumPy
    images = torch.arange(8, dtype=torch.uint8).mul(30).view(8, 1, 1, 1).expand(8, 3, 4, 4)
    labels = torch.arange(8)
    config = TrainConfig().with_values(reprob=0, mixup=1.0, smoothing=0.0)
    x, target = BatchAugment(config, PREPROCESSING, 10, CPU)(images.contiguous(), labels)
    value = pixels(x)[:, 0, 0, 0]
    own = images[:, 0, 0, 0].float() / 255
    lam = ((value[0] - own[7]) / (own[0] - own[7])).item()
    assert 0 < lam < 1
    assert torch.allclose(value, lam * own + (1 - lam) * own.flip(0), atol=1e-5)
    expected = lam * torch.eye(10)[labels] + (1 - lam) * torch.eye(10)[labels.flip(0)]
    assert torch.allclose(target, expected, atol=1e-5)


@pytest.mark.parametrize(
    "key,value", [("noise_prob", 1.5), ("noise_prob", -0.1), ("noise_std", 2.0)]
)
def test_noise_settings_outside_their_range_are_refused(key, value):
    with pytest.raises(UserError, match=key):
        merge(TrainConfig(), {key: value}, "test")


def test_progressive_resizing_grows_the_side_linearly_then_trains_at_full_size():
    from budgetnet.training.schedule import image_size_at

    config = TrainConfig().with_values(epochs=10, progressive_size=20, progressive_until=0.5)
    assert [image_size_at(config, e, 32) for e in range(10)] == [20, 22, 25, 27, 30] + [32] * 5
    plain = TrainConfig().with_values(epochs=10)
    assert {image_size_at(plain, e, 32) for e in range(10)} == {32}


def test_progressive_resizing_shrinks_each_epochs_batches_with_antialiasing(cifar, tmp_path):
    """The model sees the epoch's side, and a shrunk batch is the area average of the image."""
    from budgetnet.training import engine

    seen = []
    config = tiny_config(cifar, tmp_path, epochs=2, progressive_size=16, progressive_until=0.5)
    session = engine.setup(config, TINY_SPEC, log=lambda line: None)
    hook = session.network.model.stem.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[-1]) if module.training else None
    )
    for epoch in range(2):
        engine.train_epoch(session, epoch, _NullTracker())
    hook.remove()
    steps = len(session.batches)
    assert seen == [16] * steps + [32] * steps
    stripes = torch.zeros((1, 3, 32, 32), dtype=torch.uint8)
    stripes[..., ::2] = 200
    augment = BatchAugment(
        TrainConfig().with_values(reprob=0), replace(PREPROCESSING, size=20), 10, CPU
    )
    small = pixels(augment(stripes, None)[0])
    assert small.shape[-1] == 20  # plain bilinear would give stripes of 20..180 here
    assert torch.allclose(small, torch.full_like(small, 100 / 255), atol=0.08)


def test_progressive_resizing_refuses_a_side_the_network_cannot_take(cifar, tmp_path):
    from budgetnet.training import engine

    with pytest.raises(UserError, match="below the model's input size"):
        engine.setup(tiny_config(cifar, tmp_path, progressive_size=32), TINY_SPEC)
    with pytest.raises(UserError, match="needs a share of the epochs"):
        TrainConfig().with_values(progressive_size=16, progressive_until=0)


class _NullTracker:
    def step(self, *args) -> None:
        pass


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
    augment = BatchAugment(config, PREPROCESSING, 10, CPU)
    inputs, target = augment(x, y)
    assert inputs.shape == x.shape and torch.equal(target, y)
    loss = Objective(config)(torch.randn(JSD_SPLITS * 4, 10), target, inputs)
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_a_tiny_augmix_jsd_run_releases_a_working_model(cifar, tmp_path):
    tiny_release_run(cifar, tmp_path, aa="augmix-m3-w2", jsd_loss=True, workers=0)
