"""The whitening stem (budgetnet.models.whitening): filters that whiten 2x2 patches, set from
uint8 training images, on a seeded sample that spans the split."""

from __future__ import annotations

import numpy as np
import torch

from budgetnet.data.normalization import normalize
from budgetnet.models.builder import build
from budgetnet.models.whitening import init_whitening, patches, sample_images, whitening_filters
from budgetnet.models.zoo import model_spec

from tiny import NORM


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
