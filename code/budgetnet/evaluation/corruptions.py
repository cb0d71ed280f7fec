"""Common corruptions on uint8 image batches, as CIFAR-10-C makes them.

Kaggle test sets are collected from other sources than CIFAR's training images, and teams at
95% on CIFAR-10 have scored 85-89% there; accuracy under noise, blur, contrast, brightness,
pixelation, JPEG, fog and saturation changes shows how much of a model's accuracy survives a
shift before the leaderboard does.

The parameters per severity (1 = mild .. 5 = severe) are those of CIFAR-10-C (Hendrycks and
Dietterich 2019, `make_cifar_c.py`), and each corruption follows that script's formula, on
whole (N, H, W, 3) batches. Random ones (noise, fog) draw from a seeded numpy generator, so a
sweep is reproducible.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from budgetnet.errors import UserError

SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_SEVERITIES = (1, 3, 5)


def _gaussian_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(scale=sigma, size=x.shape).astype(x.dtype)


def _shot_noise(x: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson (photon) noise: each pixel counts `photons` x its value, so dark pixels get
    relatively more noise."""
    return (rng.poisson(x * photons) / photons).astype(x.dtype)


def _impulse_noise(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper (skimage's random_noise "s&p"): a fraction `amount` of the values, each
    colour channel on its own, set to 0 or 1 with equal odds."""
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(x.dtype), x)


def _gaussian_blur(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """skimage's `gaussian` (scipy's filter): truncated at 4 sigma, edges repeated."""
    radius = int(4 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(x.dtype)
    taps /= taps.sum()
    for axis in (1, 2):  # separable: down the columns, then along the rows
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        x = sliding_window_view(np.pad(x, pad, mode="edge"), len(taps), axis=axis) @ taps
    return x


def _contrast(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    means = x.mean(axis=(1, 2), keepdims=True)  # per image and channel
    return (x - means) * factor + means


def _brightness(x: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    """HSV value + shift. With hue and saturation fixed every channel is proportional to the
    value V = max(R, G, B), so scaling the pixel by V'/V is the HSV round trip; black pixels
    (V = 0, grey in HSV) become grey V'."""
    value = x.max(axis=-1, keepdims=True)
    brighter = np.clip(value + shift, 0, 1)
    scale = np.divide(brighter, value, out=np.zeros_like(value), where=value > 0)
    return np.where(value > 0, x * scale, brighter)


def _saturate(x: np.ndarray, factors: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """HSV saturation S -> clip(S * a + b). At fixed hue and value, V - channel is proportional
    to S, so the channel moves along that line. Grey pixels have no hue; skimage calls it 0
    (red), so CIFAR-10-C tints them red once b > 0, and so does this: (V - x) / S = (0, V, V)."""
    scale, shift = factors
    value = x.max(axis=-1, keepdims=True)
    spread = value - x.min(axis=-1, keepdims=True)
    saturation = np.divide(spread, value, out=np.zeros_like(value), where=value > 0)
    grey_direction = value * np.array([0, 1, 1], dtype=x.dtype)
    direction = np.divide(value - x, saturation, out=grey_direction, where=spread > 0)
    return value - direction * np.clip(saturation * scale + shift, 0, 1)


def _per_image(x: np.ndarray, transform: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """Apply a PIL operation to every image (x holds exact multiples of 1/255 here)."""
    pixels = np.round(x * 255).astype(np.uint8)
    out = np.stack([np.asarray(transform(Image.fromarray(image))) for image in pixels])
    return out.astype(x.dtype) / 255


def _pixelate(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    def pixelate(image: Image.Image) -> Image.Image:
        small = (int(image.width * factor), int(image.height * factor))
        return image.resize(small, Image.BOX).resize(image.size, Image.BOX)

    return _per_image(x, pixelate)


def _jpeg(x: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    def compress(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer).convert("RGB")

    return _per_image(x, compress)


def _plasma_fractal(count: int, size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """`count` diamond-square fractals (size x size, size a power of two), scaled to [0, 1].

    As CIFAR-10-C's: the noise added at a level is wibble * U(-wibble, wibble) (so its scale
    falls by decay**2 a level), the map wraps around at the edges."""
    maps = np.zeros((count, size, size))
    step, wibble = size, 100.0

    def noisy_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, ::step, ::step]
        square = corners + np.roll(corners, -1, axis=1)
        maps[:, half::step, half::step] = noisy_mean(square + np.roll(square, -1, axis=2))
        centres = maps[:, half::step, half::step]
        maps[:, ::step, half::step] = noisy_mean(
            centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        )
        maps[:, half::step, ::step] = noisy_mean(
            centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        )
        step = half
        wibble /= decay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def _fog(x: np.ndarray, params: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    strength, decay = params
    height, width = x.shape[1:3]
    size = 1 << (max(height, width) - 1).bit_length()  # the fractal wants a power of two
    fog = _plasma_fractal(len(x), size, decay, rng)[:, :height, :width, None].astype(x.dtype)
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    return (x + strength * fog) * peak / (peak + strength)


@dataclass(frozen=True)
class Corruption:
    apply: Callable[[np.ndarray, Any, np.random.Generator], np.ndarray]
    levels: tuple  # the parameter at severities 1..5


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": Corruption(_gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),
    "shot_noise": Corruption(_shot_noise, (500, 250, 100, 75, 50)),
    "impulse_noise": Corruption(_impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07)),
    "gaussian_blur": Corruption(_gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1.0)),
    "contrast": Corruption(_contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
    "brightness": Corruption(_brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
    "pixelate": Corruption(_pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
    "jpeg": Corruption(_jpeg, (80, 65, 58, 50, 40)),
    "fog": Corruption(_fog, ((0.2, 3), (0.5, 3), (0.75, 2.5), (1.0, 2), (1.5, 1.75))),
    "saturate": Corruption(_saturate, ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))),
}


def check_corruptions(names: list[str], severities: list[int]) -> None:
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise UserError(f"unknown corruption {unknown[0]!r}; known: {', '.join(CORRUPTIONS)}")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise UserError(f"severity {bad[0]} is not one of {', '.join(map(str, SEVERITIES))}")


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """`images` (uint8, N x H x W x 3) under corruption `name` at `severity`, as uint8."""
    check_corruptions([name], [severity])
    corruption = CORRUPTIONS[name]
    x = images.astype(np.float32) / 255
    out = corruption.apply(x, corruption.levels[severity - 1], np.random.default_rng(seed))
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)
