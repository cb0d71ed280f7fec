"""Batches made on the training device (budgetnet.training.augment.DeviceBatches): the
alternating flip, reflect-padded translation, and normalisation with cached statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from budgetnet.data.normalization import Normalization, normalize
from budgetnet.training.augment import DeviceBatches, altflip_base, altflip_mask, random_crop
from budgetnet.training.config import TrainConfig

from tiny import NORM


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
        per_batch = drawn[index] ^ bool(epoch % 2)  # each batch's own draw from the seed
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
