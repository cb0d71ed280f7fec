"""Integration tests on the real CIFAR-10 copy (../shared/data/cifar10, via BUDGETNET_DATA)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from budgetnet.data import sources as data
from budgetnet.data.sources import load_split, load_splits

pytestmark = pytest.mark.data
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def train(shared_cifar10):
    return load_split(shared_cifar10, "train")


@pytest.fixture(scope="module")
def test(shared_cifar10):
    return load_split(shared_cifar10, "test")


def test_real_cifar10_has_50000_train_and_10000_test_images_in_balanced_classes(train, test):
    assert train.images.shape == (50_000, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (10_000, 32, 32, 3)
    assert train.classes == CLASSES == test.classes
    assert train.class_counts().tolist() == [5000] * 10
    assert test.class_counts().tolist() == [1000] * 10


def test_pixels_are_the_decoded_files(shared_cifar10, train):
    index = train.classes.index("cat") * 5000 + 7  # files are read in sorted order per class
    name = sorted(p.name for p in (shared_cifar10 / "train" / "cat").iterdir())[7]
    with Image.open(shared_cifar10 / "train" / "cat" / name) as image:
        np.testing.assert_array_equal(train.images[index], np.asarray(image.convert("RGB")))


def test_second_load_comes_from_the_cache(shared_cifar10, test, monkeypatch):
    def no_decoding(paths):
        raise AssertionError(f"decoded {len(paths)} files instead of reading the cache")

    monkeypatch.setattr(data, "_decode_parallel", no_decoding)
    again = load_split(shared_cifar10, "test")
    np.testing.assert_array_equal(again.images, test.images)
    np.testing.assert_array_equal(again.labels, test.labels)


def test_default_splits_hold_out_a_balanced_5000_and_give_cifar10_statistics(shared_cifar10):
    splits = load_splits(shared_cifar10, seed=0)
    assert len(splits.train) == 45_000 and len(splits.val) == 5_000 and len(splits.test) == 10_000
    assert splits.val.class_counts().tolist() == [500] * 10
    # CIFAR-10's well-known statistics, a little off on this JPEG copy.
    np.testing.assert_allclose(splits.normalization.mean, [0.491, 0.482, 0.447], atol=0.005)
    np.testing.assert_allclose(splits.normalization.std, [0.247, 0.243, 0.261], atol=0.005)


def test_max_per_class_caps_every_class(shared_cifar10):
    capped = load_split(shared_cifar10, "train", max_per_class=500)
    assert len(capped) == 5000 and capped.class_counts().tolist() == [500] * 10
