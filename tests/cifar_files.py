"""Small data sets written in every real format the data layer reads, for unit tests.

Images are random but seeded; labels cycle through the classes so every class is present.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def random_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def cycling_labels(count: int, num_classes: int) -> np.ndarray:
    return np.arange(count, dtype=np.int64) % num_classes


def to_cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) HWC -> CIFAR's (N, 3072) rows: red plane, green plane, blue plane."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _dump(path: Path, payload: dict) -> None:
    # Protocol 2 with byte-string keys: what the Python 2 CIFAR files hold.
    with path.open("wb") as handle:
        pickle.dump(payload, handle, protocol=2)


def write_cifar10(
    folder: Path, per_batch: int = 20, test_count: int = 20, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cifar-10-batches-py layout; returns the (images, labels) written per split."""
    folder.mkdir(parents=True, exist_ok=True)
    _dump(
        folder / "batches.meta",
        {
            b"label_names": [c.encode() for c in CIFAR10_CLASSES],
            b"num_cases_per_batch": per_batch,
            b"num_vis": 3072,
        },
    )
    train_images = random_images(5 * per_batch, seed)
    train_labels = cycling_labels(5 * per_batch, 10)
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        _dump(
            folder / f"data_batch_{i + 1}",
            {
                b"batch_label": f"training batch {i + 1} of 5".encode(),
                b"labels": train_labels[part].tolist(),
                b"data": to_cifar_rows(train_images[part]),
                b"filenames": [b"x.png"] * per_batch,
            },
        )
    test_images = random_images(test_count, seed + 1)
    test_labels = cycling_labels(test_count, 10)[::-1].copy()
    _dump(
        folder / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": test_labels.tolist(),
            b"data": to_cifar_rows(test_images),
        },
    )
    return {"train": (train_images, train_labels), "test": (test_images, test_labels)}


def write_cifar100(
    folder: Path, train_count: int = 200, test_count: int = 100, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """cifar-100-python layout; returns (images, fine labels, coarse labels) per split."""
    folder.mkdir(parents=True, exist_ok=True)
    _dump(
        folder / "meta",
        {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        },
    )
    written = {}
    for offset, (split, count) in enumerate((("train", train_count), ("test", test_count))):
        images = random_images(count, seed + offset)
        fine = cycling_labels(count, 100)
        coarse = fine // 5
        _dump(
            folder / split,
            {
                b"filenames": [b"x.png"] * count,
                b"fine_labels": fine.tolist(),
                b"coarse_labels": coarse.tolist(),
                b"data": to_cifar_rows(images),
            },
        )
        written[split] = (images, fine, coarse)
    return written


def write_archive(folder: Path, archive: Path) -> Path:
    """Pack a CIFAR folder as the official tar.gz does (the folder as the top member)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def write_image_folder(
    root: Path, per_class: dict[str, int], split: str = "train", suffix: str = ".png", seed: int = 0
) -> dict[str, np.ndarray]:
    """ROOT/<split>/<class>/NNNN<suffix>; returns the images written per class, in file order."""
    written = {}
    for offset, (name, count) in enumerate(sorted(per_class.items())):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        images = random_images(count, seed + offset)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:04d}{suffix}")
        written[name] = images
    return written
