"""Reading the competition's unlabeled test pickle: every layout, and every refusal."""

from __future__ import annotations

import builtins
import os
import pickle

import numpy as np
import pytest

from budgetnet.data.kaggle import kaggle_style, read_unlabeled_pickle, write_unlabeled_pickle
from budgetnet.data.safe_pickle import safe_load, safe_loads
from budgetnet.errors import UserError

from cifar_files import random_images, to_cifar_rows

IMAGES = random_images(6, seed=2)
IDS = np.array([40, 3, 17, 0, 99, 5])


def dump(tmp_path, payload, name="test.pkl", protocol=pickle.HIGHEST_PROTOCOL):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("layout", ["hwc", "flat", "chw"])
def test_every_layout_reads_back_as_hwc(tmp_path, layout, protocol):
    data = {
        "hwc": IMAGES,
        "flat": to_cifar_rows(IMAGES),
        "chw": IMAGES.transpose(0, 3, 1, 2).copy(),
    }[layout]
    path = dump(tmp_path, {b"data": data, b"ids": IDS}, protocol=protocol)
    loaded = read_unlabeled_pickle(path)
    np.testing.assert_array_equal(loaded.images, IMAGES)
    np.testing.assert_array_equal(loaded.ids, IDS)
    assert loaded.ids.dtype == np.int64 and len(loaded) == 6


@pytest.mark.parametrize("layout", ["hwc", "flat", "chw"])
def test_written_pickle_reads_back_in_every_layout_and_leaves_no_temporary_file(tmp_path, layout):
    write_unlabeled_pickle(tmp_path / "out.pkl", IMAGES, IDS, layout)
    raw = safe_load(tmp_path / "out.pkl")
    assert (
        raw[b"data"].shape[1:] == {"hwc": (32, 32, 3), "flat": (3072,), "chw": (3, 32, 32)}[layout]
    )
    loaded = read_unlabeled_pickle(tmp_path / "out.pkl")
    np.testing.assert_array_equal(loaded.images, IMAGES)
    np.testing.assert_array_equal(loaded.ids, IDS)
    assert [p.name for p in tmp_path.iterdir()] == ["out.pkl"]  # no temporary file left


def test_str_keys_list_ids_and_wider_int_pixels_are_accepted(tmp_path):
    # str keys, ids as a Python list of ints / numpy ints, pixel values in a wider int dtype
    path = dump(tmp_path, {"data": IMAGES.astype(np.int32), "ids": [int(i) for i in IDS]})
    np.testing.assert_array_equal(read_unlabeled_pickle(path).images, IMAGES)
    path = dump(tmp_path, {b"data": IMAGES, b"ids": list(IDS.astype(np.uint32))})
    np.testing.assert_array_equal(read_unlabeled_pickle(path).ids, IDS)


REFUSALS = [
    ({b"ids": IDS}, "missing key b'data'"),
    ({b"data": IMAGES}, "missing key b'ids'"),
    ([IMAGES, IDS], "holds list .*, expected a dict"),
    ({b"data": IMAGES.tolist(), b"ids": IDS}, "is a list, expected a numpy array"),
    ({b"data": IMAGES[:, :16], b"ids": IDS}, r"has shape \(6, 16, 32, 3\)"),
    ({b"data": IMAGES.reshape(6, -1)[:, :3000], b"ids": IDS}, r"has shape \(6, 3000\)"),
    ({b"data": IMAGES[0], b"ids": IDS[:1]}, r"has shape \(32, 32, 3\)"),
    ({b"data": IMAGES.astype(np.float32) / 255, b"ids": IDS}, "dtype float32"),
    ({b"data": IMAGES.astype(bool), b"ids": IDS}, "dtype bool"),
    ({b"data": IMAGES.astype(np.int16) + 1, b"ids": IDS}, r"values 1\.\.256, outside 0\.\.255"),
    ({b"data": IMAGES.astype(np.int16) - 1, b"ids": IDS}, "outside 0..255"),
    ({b"data": IMAGES[:0], b"ids": IDS[:0]}, "holds no images"),
    ({b"data": IMAGES, b"ids": IDS[:5]}, r"expected \(6,\): one id per image"),
    ({b"data": IMAGES, b"ids": IDS.reshape(2, 3)}, r"has shape \(2, 3\)"),
    ({b"data": IMAGES, b"ids": np.array([1, 2, 3, 3, 4, 1])}, "2 duplicates, e.g. 1, 3"),
    ({b"data": IMAGES, b"ids": IDS.astype(np.float64)}, "dtype float64; ids must be integers"),
    ({b"data": IMAGES, b"ids": [1, 2, 3, None, 5, 6]}, "holds None"),
    ({b"data": IMAGES, b"ids": [1, 2, 3, 4.0, 5, 6]}, "holds float 4.0"),
    ({b"data": IMAGES, b"ids": [True, 2, 3, 4, 5, 6]}, "holds bool True"),
    ({b"data": IMAGES, b"ids": ["a", 2, 3, 4, 5, 6]}, "holds str 'a'"),
    ({b"data": IMAGES, b"ids": "123456"}, "is a str, expected an array or list"),
    ({b"data": IMAGES, b"ids": np.full(6, 2**63, np.uint64)}, "too large"),
]


@pytest.mark.parametrize(("payload", "message"), REFUSALS)
def test_malformed_pickles_are_refused_in_one_line_naming_the_file(tmp_path, payload, message):
    path = dump(tmp_path, payload)
    with pytest.raises(UserError, match=message) as info:
        read_unlabeled_pickle(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_non_pickle_missing_and_directory_paths_are_refused(tmp_path):
    good = pickle.dumps({b"data": IMAGES, b"ids": IDS})
    (tmp_path / "cut.pkl").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="not a valid pickle"):
        read_unlabeled_pickle(tmp_path / "cut.pkl")
    (tmp_path / "text.pkl").write_text("ID,Labels\n1,2\n")
    with pytest.raises(UserError, match="not a valid pickle"):
        read_unlabeled_pickle(tmp_path / "text.pkl")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(UserError, match="not a valid pickle"):
        read_unlabeled_pickle(tmp_path / "empty.pkl")
    with pytest.raises(UserError, match="no such file"):
        read_unlabeled_pickle(tmp_path / "missing.pkl")
    with pytest.raises(UserError, match="is a directory"):
        read_unlabeled_pickle(tmp_path)


class _CreatesFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (builtins.open, (str(self.target), "w"))


class _RunsShell:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("evil", [_CreatesFile, _RunsShell])
@pytest.mark.parametrize("where", ["top", "ids", "nested"])
def test_hostile_pickle_cannot_run_code(tmp_path, evil, where):
    target = tmp_path / "created_by_pickle"
    payload = {
        "top": evil(target),
        "ids": {b"data": IMAGES, b"ids": evil(target)},
        "nested": {b"data": IMAGES, b"ids": IDS, b"extra": [{"x": (evil(target),)}]},
    }[where]
    path = dump(tmp_path, payload)
    # The same object really does create the file when unpickled the unsafe way.
    assert not target.exists()
    with pytest.raises(UserError, match="only numpy arrays and plain containers"):
        read_unlabeled_pickle(path)
    assert not target.exists()


def test_unsafe_load_would_have_run_it(tmp_path):
    """Control for the test above: plain pickle.loads does create the file."""
    target = tmp_path / "created"
    pickle.loads(pickle.dumps(_CreatesFile(target))).close()
    assert target.exists()


def test_safe_loads_keeps_plain_values():
    value = {
        "a": [1, 2.5, None, True],
        b"b": (b"x", "y"),
        "c": np.arange(3, dtype=np.int16),
        "d": np.float32(1.5),
        "e": np.dtype("uint8"),
        "f": np.zeros((2, 2), order="F"),
    }
    loaded = safe_loads(pickle.dumps(value, protocol=5))
    assert loaded["a"] == [1, 2.5, None, True] and loaded[b"b"] == (b"x", "y")
    np.testing.assert_array_equal(loaded["c"], value["c"])
    assert loaded["c"].dtype == np.int16 and loaded["d"] == np.float32(1.5)
    assert loaded["e"] == np.dtype("uint8") and loaded["f"].shape == (2, 2)
    with pytest.raises(UserError, match="collections.OrderedDict"):
        safe_loads(pickle.dumps(__import__("collections").OrderedDict(a=1)))


def test_kaggle_style_shuffles_rows_and_draws_ids():
    from budgetnet.data.sources import ImageSet

    labels = np.arange(50) % 10
    source = ImageSet(random_images(50), labels, [str(i) for i in range(10)], "test")
    images, ids, shuffled = kaggle_style(source, seed=0)
    assert len(np.unique(ids)) == 50 and ids.dtype == np.int64
    assert not np.array_equal(ids, np.arange(50))
    # Each image keeps its own label.
    lookup = {bytes(image): label for image, label in zip(source.images, labels, strict=True)}
    assert all(lookup[bytes(image)] == label for image, label in zip(images, shuffled, strict=True))
    again = kaggle_style(source, seed=0)
    np.testing.assert_array_equal(again[1], ids)
