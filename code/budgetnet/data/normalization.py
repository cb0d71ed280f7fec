"""Pixel statistics and the one preprocessing step every model input goes through.

Training, validation, evaluation, inference and the web demo all call `normalize`, so the
pixels a model sees at test time are prepared exactly as in training. A `Preprocessing` is the
whole of it for one model (input size, memory order, normalisation): a training run makes one,
validates with it and stores it in the release, which inference reads it back from.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from budgetnet.errors import UserError, brief

MIN_STD = 1e-3  # the smallest per-channel std a normalisation may have (pixels in [0, 1])
# How a run normalises: the training images' own statistics, or ImageNet's (the 224 px recipes).
NORMALIZE_CHOICES = ("data", "imagenet")
MAX_INPUT_SIZE = 1024  # pixels a side, as ResNetSpec caps input_size (a release is read from disk)


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std of pixel values scaled to [0, 1], and where they came from."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    @classmethod
    def from_images(cls, images: np.ndarray, source: str) -> Normalization:
        # Exact float64 sums over chunks of pixels, as matrix products: a strided per-channel
        # reduction is several times slower than BLAS on (pixels, 3) blocks.
        pixels = images.reshape(-1, 3)
        chunk = 1 << 18
        ones = np.ones(chunk)
        total, gram = np.zeros(3), np.zeros((3, 3))
        for start in range(0, len(pixels), chunk):
            block = pixels[start : start + chunk].astype(np.float64)
            total += ones[: len(block)] @ block
            gram += block.T @ block
        mean = total / len(pixels)
        std = np.sqrt(np.maximum(np.diag(gram) / len(pixels) - mean * mean, 0.0))
        mean, std = mean / 255.0, std / 255.0
        return cls(
            tuple(float(m) for m in mean),
            tuple(float(s) for s in std),
            f"per-channel mean/std of {len(images)} training images: {source}",
        )

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "source": self.source}

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if (
                not isinstance(values, tuple)
                or len(values) != 3
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
                or not all(math.isfinite(v) for v in values)
            ):
                raise UserError(
                    f"normalisation {name} must be 3 finite numbers, got {brief(values)}"
                )
        if not all(s >= MIN_STD for s in self.std):
            raise UserError(
                f"normalisation std {list(self.std)} has a value below {MIN_STD}: a model "
                "trained with it would see saturated inputs (a degenerate release?)"
            )

    @classmethod
    def from_dict(cls, data: dict) -> Normalization:
        if not isinstance(data, dict) or not {"mean", "std", "source"} <= data.keys():
            raise UserError(f"normalisation needs mean, std and source, got {brief(data)}")
        mean, std = data["mean"], data["std"]
        if not isinstance(mean, list | tuple) or not isinstance(std, list | tuple):
            raise UserError(f"normalisation mean and std must be lists, got {brief(mean)}")
        return cls(tuple(mean), tuple(std), str(data["source"]))


def as_uint8_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Images as uint8 (N, 3, H, W): numpy arrays come as (N, H, W, 3), tensors as NCHW."""
    if isinstance(images, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return images


@functools.lru_cache(maxsize=32)
def channel_statistics(
    normalization: Normalization, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (1, 3, 1, 1) tensors on `device`, cached per (normalization, device,
    dtype) so a batch does not copy them to the device. Shared, so never modified in place."""
    mean = torch.tensor(normalization.mean, device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(normalization.std, device=device, dtype=dtype).view(1, 3, 1, 1)
    return mean, std


def normalize(
    batch: torch.Tensor,
    normalization: Normalization,
    size: int | None = None,
    channels_last: bool = True,
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32, scaled to [0, 1], standardised per channel, resized to
    `size` pixels if given and different (the 224 px ImageNet-style presets), in channels_last
    memory order unless `channels_last` is False (faster convolutions with cuDNN and oneDNN)."""
    mean, std = channel_statistics(normalization, batch.device, torch.get_default_dtype())
    x = (batch.float() / 255.0 - mean) / std
    if size is not None and x.shape[-1] != size:
        # antialiased when shrinking (progressive resizing), so small steps see no aliasing
        shrink = size < x.shape[-1]
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
        )
    return x.contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


def imagenet_normalization() -> Normalization:
    """ImageNet's mean/std, as torchvision's pretrained models use."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # timm costs a second

    return Normalization(
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        "ImageNet mean/std, as torchvision's pretrained models use (timm IMAGENET_DEFAULT_*)",
    )


def chosen_normalization(choice: str, images: np.ndarray, source: str) -> Normalization:
    """The normalisation `choice` (one of NORMALIZE_CHOICES) gives training images `images`,
    which came from `source`."""
    if choice == "data":
        return Normalization.from_images(images, source)
    if choice == "imagenet":
        return imagenet_normalization()
    raise UserError(f"normalize {choice!r}: choose one of {', '.join(NORMALIZE_CHOICES)}")


@dataclass(frozen=True)
class Preprocessing:
    """Everything between uint8 images and a model's input: the size they are resized to, the
    memory order (channels_last or contiguous NCHW, the order the model's weights are in) and
    the normalisation."""

    size: int
    channels_last: bool
    normalization: Normalization

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            raise UserError(f"preprocessing size must be an integer, got {brief(self.size)}")
        if not 1 <= self.size <= MAX_INPUT_SIZE:
            raise UserError(f"preprocessing size {self.size} is outside 1..{MAX_INPUT_SIZE} pixels")
        if not isinstance(self.channels_last, bool):
            raise UserError(
                f"preprocessing channels_last must be true or false, got "
                f"{brief(self.channels_last)}"
            )

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> the model's float32 input (`normalize`)."""
        return normalize(batch, self.normalization, self.size, self.channels_last)

    def layout(self) -> dict:
        """model.json's "preprocessing": size and memory order. The normalisation is stored
        beside it, under "normalization", where every release has kept it."""
        return {"size": self.size, "channels_last": self.channels_last}

    @classmethod
    def from_layout(
        cls, layout: dict | None, normalization: Normalization, input_size: int
    ) -> Preprocessing:
        """The preprocessing of a release: its stored `layout`, or for releases written before
        it was stored (None) what inference has always fed them: the spec's `input_size`,
        channels_last."""
        if layout is None:
            return cls(input_size, True, normalization)
        if not isinstance(layout, dict) or not {"size", "channels_last"} <= layout.keys():
            raise UserError(f"preprocessing needs size and channels_last, got {brief(layout)}")
        return cls(layout["size"], layout["channels_last"], normalization)
