"""The corruptions against straightforward per-pixel or per-image references."""

from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
from PIL import Image

from budgetnet.errors import UserError
from budgetnet.evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupt

from cifar_files import random_images


@pytest.fixture(scope="module")
def images():
    return random_images(6, seed=5)


def hsv_reference(image: np.ndarray, change) -> np.ndarray:
    """CIFAR-10-C's HSV round trip, pixel by pixel with the standard library (same conventions
    as skimage: grey pixels get hue 0)."""
    out = np.empty(image.shape)
    for index in np.ndindex(image.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(image[index] / 255))
        out[index] = colorsys.hsv_to_rgb(h, *change(s, v))
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_corruption_keeps_shape_and_changes_the_images(images, name):
    for severity in SEVERITIES:
        out = corrupt(images, name, severity, seed=1)
        assert out.dtype == np.uint8 and out.shape == images.shape
        assert not np.array_equal(out, images)
        np.testing.assert_array_equal(out, corrupt(images, name, severity, seed=1))  # seeded


@pytest.mark.parametrize("name", ["gaussian_noise", "fog"])
def test_random_corruptions_depend_on_the_seed(images, name):
    assert not np.array_equal(corrupt(images, name, 3, seed=1), corrupt(images, name, 3, seed=2))


def test_brightness_and_saturation_match_the_hsv_round_trip(images):
    image = images[0, :8, :8]
    image[0, 0] = 0  # black: no hue, no saturation
    image[0, 1] = 128  # grey: saturation 0, hue 0 by convention
    shift = CORRUPTIONS["brightness"].levels[4]
    expected = hsv_reference(image, lambda s, v: (s, min(v + shift, 1)))
    got = corrupt(image[None], "brightness", 5)[0]
    assert np.abs(got.astype(int) - expected).max() <= 1  # float32 against float64 rounding
    scale, add = CORRUPTIONS["saturate"].levels[4]
    expected = hsv_reference(image, lambda s, v: (min(max(s * scale + add, 0), 1), v))
    got = corrupt(image[None], "saturate", 5)[0]
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_blur_spreads_a_point_as_a_normalised_gaussian():
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 16, 16] = 255
    sigma = CORRUPTIONS["gaussian_blur"].levels[4]
    out = corrupt(image, "gaussian_blur", 5)[0, :, :, 0].astype(float)
    offsets = np.arange(-4, 5)  # scipy's truncation at 4 sigma: radius int(4 * 1.0 + 0.5)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    expected = np.outer(taps, taps) / taps.sum() ** 2 * 255
    np.testing.assert_allclose(out[12:21, 12:21], expected, atol=0.5 + 1e-6)
    assert out[:12].sum() == 0 and out[21:].sum() == 0


def test_contrast_keeps_each_images_mean_and_scales_its_spread(images):
    factor = CORRUPTIONS["contrast"].levels[1]
    out = corrupt(images, "contrast", 2).astype(float)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), images.mean(axis=(1, 2)), atol=0.5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), factor * images.std(axis=(1, 2)), atol=0.5)


def test_jpeg_and_pixelate_are_the_pil_operations(images):
    quality = CORRUPTIONS["jpeg"].levels[2]
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, "JPEG", quality=quality)
    np.testing.assert_array_equal(corrupt(images, "jpeg", 3)[0], np.asarray(Image.open(buffer)))
    side = int(32 * CORRUPTIONS["pixelate"].levels[4])
    small = Image.fromarray(images[0]).resize((side, side), Image.BOX)
    np.testing.assert_array_equal(
        corrupt(images, "pixelate", 5)[0], np.asarray(small.resize((32, 32), Image.BOX))
    )


def test_fog_whitens_towards_the_brightest_pixel(images):
    out = corrupt(images, "fog", 5).astype(float)
    before = images.astype(float)
    assert out.std(axis=(1, 2, 3)).mean() < before.std(axis=(1, 2, 3)).mean()  # washed out
    assert out.max() <= images.max()


def test_unknown_names_and_severities_are_refused(images):
    with pytest.raises(UserError, match="unknown corruption 'snow'"):
        corrupt(images, "snow", 1)
    with pytest.raises(UserError, match="severity 6"):
        corrupt(images, "fog", 6)
