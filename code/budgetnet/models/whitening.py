"""The whitening stem's weights, computed from training images (airbench's first layer).

The stem is a 2x2 convolution without padding. Its filters are the eigenvectors of the
covariance of the 2x2x3 patches of (normalised) training images, each divided by
sqrt(eigenvalue + eps), so that the filter responses are decorrelated with unit variance, and
each comes with its negation (24 filters for 12 eigenvectors) so that the GELU after it loses
nothing. The weights are then frozen; only the stem's bias trains, for the first epochs.
Nothing here comes from a pretrained model: the statistics are those of the training split.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from budgetnet.data.normalization import Normalization, normalize

if TYPE_CHECKING:
    from budgetnet.data.sources import DataSplits
    from budgetnet.models.spec import ResNetSpec

EPS = 5e-4  # added to each eigenvalue: keeps the near-zero directions from being amplified
SAMPLE = 5000  # training images whose patches are counted (airbench: 5,000)


def patches(images: torch.Tensor, kernel: int) -> torch.Tensor:
    """Every kernel x kernel patch of float (N, C, H, W) images, flattened in the order of a
    convolution filter's weights (C, kernel, kernel): (N * H' * W', C * kernel**2)."""
    c = images.shape[1]
    windows = images.unfold(2, kernel, 1).unfold(3, kernel, 1)  # N, C, H', W', k, k
    return windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kernel * kernel).double()


def whitening_filters(images: torch.Tensor, kernel: int, eps: float = EPS) -> torch.Tensor:
    """(2 * C * kernel**2, C, kernel, kernel) filters: the scaled eigenvectors of the patch
    covariance, largest eigenvalue first, then the same filters negated."""
    flat = patches(images, kernel)
    covariance = flat.T @ flat / len(flat)  # about zero-mean already: the images are normalised
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).float()
    filters = filters.reshape(-1, images.shape[1], kernel, kernel)
    return torch.cat([filters, -filters])


def sample_images(images: np.ndarray, seed: int, count: int = SAMPLE) -> np.ndarray:
    """A seeded sample of the training images (image folders come sorted by class, so the
    first `count` would all be airplanes)."""
    if len(images) <= count:
        return images
    index = np.random.default_rng(seed).choice(len(images), count, replace=False)
    return images[np.sort(index)]


@torch.no_grad()
def init_whitening(
    conv: nn.Conv2d, images: np.ndarray, normalization: Normalization, eps: float = EPS
) -> None:
    """Set `conv`'s weights from uint8 (N, H, W, 3) training images, preprocessed as the model
    will see them, and zero its bias."""
    x = normalize(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), normalization)
    filters = whitening_filters(x.contiguous(), conv.kernel_size[0], eps)
    if filters.shape != conv.weight.shape:
        raise ValueError(f"whitening filters {tuple(filters.shape)} for a {conv}")
    conv.weight.copy_(filters.to(conv.weight.device, conv.weight.dtype))
    if conv.bias is not None:
        conv.bias.zero_()


def whitened_stem(model: nn.Module, spec: ResNetSpec) -> nn.Conv2d | None:
    """The model's whitening stem convolution, or None when its stem is another kind."""
    return model.stem.conv if spec.stem == "whiten" else None


def init_model(model: nn.Module, spec: ResNetSpec, splits: DataSplits, seed: int) -> float:
    """Data-dependent initialisation of a new model (the whitening stem's filters from the
    training images); returns its seconds, which count as training time (as airbench's do)."""
    started = time.perf_counter()
    stem = whitened_stem(model, spec)
    if stem is not None:
        init_whitening(stem, sample_images(splits.train.images, seed), splits.normalization)
    return time.perf_counter() - started
