"""The one way images go into a model: preprocessing, test-time augmentation and `infer()`.

Training, validation, evaluation, inference and the web demo all call these, so the pixels a
model sees at test time are prepared exactly as in training.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from budgetnet.data.normalization import Preprocessing, as_uint8_nchw
from budgetnet.errors import UserError
from budgetnet.runtime import autocast

TTA_LEVELS = (0, 1, 2)
# Images per forward pass: on 2 CPU cores, batches of 64-128 label about 1.45x faster than
# batches of 500 (benchmarks/inference_speed.py); a GPU may prefer larger ones (--batch-size).
BATCH_SIZE = 128


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


def view_count(level: int) -> int:
    """How many views of each image a TTA level averages (asked of `tta_views` itself)."""
    return len(tta_views(torch.zeros(1, 3, 4, 4), level))


@torch.no_grad()
def infer(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    preprocessing: Preprocessing,
    *,
    tta: int = 0,
    batch_size: int = BATCH_SIZE,
    device: torch.device | None = None,
    amp: bool = True,
) -> torch.Tensor:
    """Class probabilities (N, num_classes), float32 on the CPU, averaged over the TTA views.

    `images`: uint8, numpy (N, H, W, 3) or a tensor (N, 3, H, W) on any device;
    `preprocessing`: the model's own (a release's, or a training session's).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    images = as_uint8_nchw(images)
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = preprocessing(images[start : start + batch_size].to(device, non_blocking=True))
            with autocast(device, amp):
                views = tta_views(x, tta)
                probs = sum(model(v).float().softmax(-1) for v in views) / len(views)
            out.append(probs.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def check_finite_probs(probs: np.ndarray | torch.Tensor, source: str) -> np.ndarray | torch.Tensor:
    """`probs` (N, classes) as they are, once they are all finite; else a UserError naming
    `source` (the model they came from). Every command that scores a model (inference.py,
    evaluate.py, publishing, the demo, the corruption sweep) labels through `Ensemble.probs`,
    which checks each member's `infer()` output here, before anything is computed or written
    from them: finite weights can still overflow (fp16 weights that are too large, a BatchNorm
    variance of 0) and give NaN, which would otherwise read as class 0 everywhere."""
    bad = ~torch.isfinite(torch.as_tensor(probs))
    if bad.ndim > 1:
        bad = bad.flatten(1).any(1)  # per image
    if bool(bad.any()):
        raise UserError(
            f"{source}: the model gave non-finite probabilities for "
            f"{int(bad.sum()):,} of {len(probs):,} images (a broken release: its weights "
            "are finite but its activations overflow?); nothing written"
        )
    return probs
