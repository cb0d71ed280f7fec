"""The one way images go into a model: preprocessing, test-time augmentation and `infer()`.

Training, validation, evaluation, inference and the web demo all call these, so the pixels a
model sees at test time are prepared exactly as in training.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from budgetnet.data import Normalization
from budgetnet.runtime import amp_dtype

TTA_LEVELS = (0, 1, 2)


def resolve_device(name: str | None = None) -> torch.device:
    """`None`/"auto": CUDA when there is one, else the CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast where `device` computes bf16 natively (CUDA; CPUs with AVX-512 BF16 or
    AMX, where it is 2-2.5x faster); float32 elsewhere, where bf16 would be emulated and slow."""
    dtype = amp_dtype(device, enabled)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def as_uint8_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Images as uint8 (N, 3, H, W): numpy arrays come as (N, H, W, 3), tensors as NCHW."""
    if isinstance(images, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return images


def normalize(
    batch: torch.Tensor, normalization: Normalization, size: int | None = None
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32, scaled to [0, 1], standardised per channel, resized to
    `size` pixels if given and different (the 224 px ImageNet-style presets), in channels_last
    memory order (faster convolutions with cuDNN and oneDNN)."""
    mean = torch.tensor(normalization.mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(normalization.std, device=batch.device).view(1, 3, 1, 1)
    x = (batch.float() / 255.0 - mean) / std
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


def _translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift by (dy, dx) pixels, filling the edge by reflection (as airbench's TTA does)."""
    pad = max(abs(dy), abs(dx))
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def tta_views(x: torch.Tensor, level: int) -> list[torch.Tensor]:
    """Level 0: the batch; 1: plus its mirror image; 2: both, each also shifted by one pixel
    up-left and down-right (6 views)."""
    if level not in TTA_LEVELS:
        raise ValueError(f"TTA level must be one of {TTA_LEVELS}, got {level}")
    views = [x] if level == 0 else [x, x.flip(-1)]
    if level == 2:
        views += [_translate(v, d, d) for v in views[:2] for d in (-1, 1)]
    return views


@torch.no_grad()
def infer(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    normalization: Normalization,
    *,
    tta: int = 0,
    batch_size: int = 128,
    device: torch.device | None = None,
    amp: bool = True,
) -> torch.Tensor:
    """Class probabilities (N, num_classes), float32 on the CPU, averaged over the TTA views.

    `images`: uint8, numpy (N, H, W, 3) or a tensor (N, 3, H, W) on any device.
    """
    device = device or next(model.parameters()).device
    size = getattr(getattr(model, "spec", None), "input_size", None)
    was_training = model.training
    model.eval()
    images = as_uint8_nchw(images)
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = normalize(
                images[start : start + batch_size].to(device, non_blocking=True),
                normalization,
                size,
            )
            with autocast(device, amp):
                views = tta_views(x, tta)
                probs = sum(model(v).float().softmax(-1) for v in views) / len(views)
            out.append(probs.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
