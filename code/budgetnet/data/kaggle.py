"""The competition's unlabeled test pickle: read it safely, refuse anything malformed, write one.

`cifar_test_nolabel.pkl` is a pickled dict: b'data', uint8 (N, 32, 32, 3) in HWC order, and
b'ids', N integer ids. Older editions stored b'data' as (N, 3072) rows in CIFAR's CHW byte
order; (N, 3, 32, 32) is accepted too. Every problem ends in a UserError naming it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from budgetnet.data.safe_pickle import pickle_field, safe_load
from budgetnet.data.sources import IMAGE_SIZE, ImageSet
from budgetnet.errors import UserError, brief
from budgetnet.files import atomic_write

LAYOUTS = {  # name -> shape of one image in b'data'
    "hwc": (IMAGE_SIZE, IMAGE_SIZE, 3),
    "flat": (3 * IMAGE_SIZE * IMAGE_SIZE,),  # CIFAR's CHW bytes in one row
    "chw": (3, IMAGE_SIZE, IMAGE_SIZE),
}


@dataclass
class UnlabeledSet:
    images: np.ndarray  # uint8 (N, 32, 32, 3), RGB, HWC
    ids: np.ndarray  # int64 (N,), in the pickle's order
    source: str

    def __len__(self) -> int:
        return len(self.ids)


def _images_from(data, path: Path) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise UserError(f"{path}: b'data' is a {type(data).__name__}, expected a numpy array")
    if data.dtype.kind not in "iu":
        raise UserError(f"{path}: b'data' has dtype {data.dtype}, expected uint8 pixel values")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise UserError(f"{path}: b'data' has values {data.min()}..{data.max()}, outside 0..255")
    layout = next((name for name, shape in LAYOUTS.items() if data.shape[1:] == shape), None)
    if data.ndim < 2 or layout is None:
        raise UserError(
            f"{path}: b'data' has shape {data.shape}, expected (N, 32, 32, 3), "
            "(N, 3072) or (N, 3, 32, 32)"
        )
    data = data.astype(np.uint8, copy=False)
    if layout == "flat":
        data = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
    if layout != "hwc":
        data = data.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(data)


def _ids_from(ids, count: int, path: Path) -> np.ndarray:
    if isinstance(ids, (list, tuple)):
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
            bad = next(
                i for i in ids if not isinstance(i, (int, np.integer)) or isinstance(i, bool)
            )
            raise UserError(f"{path}: b'ids' holds {brief(bad)}; ids must be integers")
        try:
            ids = np.asarray(ids, dtype=np.int64)
        except OverflowError:
            raise UserError(f"{path}: b'ids' holds integers too large for 64 bits") from None
    elif isinstance(ids, np.ndarray):
        if ids.dtype.kind not in "iu":
            raise UserError(f"{path}: b'ids' has dtype {ids.dtype}; ids must be integers")
        if ids.dtype == np.uint64 and ids.size and ids.max() > np.iinfo(np.int64).max:
            raise UserError(f"{path}: b'ids' holds integers too large for 64 bits")
        ids = ids.astype(np.int64)
    else:
        raise UserError(
            f"{path}: b'ids' is a {type(ids).__name__}, expected an array or list of integers"
        )
    if ids.ndim != 1 or len(ids) != count:
        raise UserError(
            f"{path}: b'ids' has shape {ids.shape}, expected ({count},): one id per image"
        )
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        dupes = unique[counts > 1]
        raise UserError(
            f"{path}: b'ids' has {len(ids) - len(unique)} duplicates, e.g. "
            f"{', '.join(str(d) for d in dupes[:5])}"
        )
    return ids


def read_unlabeled_pickle(path: str | Path) -> UnlabeledSet:
    """Load a Kaggle-style test pickle, checking everything a submission depends on."""
    path = Path(path)
    payload = safe_load(path)
    if not isinstance(payload, dict):
        raise UserError(f"{path}: holds {brief(payload)}, expected a dict with b'data' and b'ids'")
    images = _images_from(pickle_field(payload, "data", str(path)), path)
    if len(images) == 0:
        raise UserError(f"{path}: holds no images")
    ids = _ids_from(pickle_field(payload, "ids", str(path)), len(images), path)
    return UnlabeledSet(images, ids, str(path))


def write_unlabeled_pickle(
    path: str | Path, images: np.ndarray, ids: np.ndarray, layout: str = "hwc"
) -> None:
    """Write images (N, 32, 32, 3) and ids as the competition does, atomically."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    data = images if layout == "hwc" else images.transpose(0, 3, 1, 2)
    data = np.ascontiguousarray(data).reshape((len(images), *LAYOUTS[layout]))
    with atomic_write(path, "wb") as handle:
        pickle.dump(
            {b"data": data, b"ids": np.asarray(ids, dtype=np.int64)},
            handle,
            protocol=pickle.HIGHEST_PROTOCOL,
        )


def kaggle_style(images: ImageSet, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A labeled split as the competition would ship it: rows shuffled and distinct ids drawn
    from 0..10N-1, so a submission that writes row numbers instead of ids fails the checker.
    Returns (images, ids, labels), labels in the same order (the answer key)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    ids = rng.choice(10 * len(images), size=len(images), replace=False)
    return images.images[order], ids.astype(np.int64), images.labels[order]
