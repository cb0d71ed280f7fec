"""The data layer on small files written in every real format it reads."""

from __future__ import annotations

import io
import os
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from budgetnet.data import sources as data
from budgetnet.data.normalization import imagenet_normalization
from budgetnet.data.sources import (
    DataProvenance,
    Normalization,
    Source,
    cap_per_class,
    load_split,
    load_splits,
    locate,
    resolve_source,
    split_train_val,
)
from budgetnet.errors import UserError

from cifar_files import (
    CIFAR10_CLASSES,
    write_archive,
    write_cifar10,
    write_cifar100,
    write_image_folder,
)


def assert_image_set(images, expected_images, expected_labels, classes):
    assert images.images.dtype == np.uint8 and images.images.shape[1:] == (32, 32, 3)
    assert images.labels.dtype == np.int64
    np.testing.assert_array_equal(images.images, expected_images)
    np.testing.assert_array_equal(images.labels, expected_labels)
    assert images.classes == classes


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_batches_folder_or_its_parent_reads_back_the_written_images(tmp_path, split):
    written = write_cifar10(tmp_path / "cifar-10-batches-py")
    for where in (tmp_path / "cifar-10-batches-py", tmp_path):  # the folder, or its parent
        loaded = load_split(where, split)
        assert_image_set(loaded, *written[split], CIFAR10_CLASSES)


def test_cifar10_archive_read_without_unpacking(tmp_path):
    written = write_cifar10(tmp_path / "src" / "cifar-10-batches-py", per_batch=8)
    archive = write_archive(
        tmp_path / "src" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz"
    )
    for split in ("train", "test"):
        assert_image_set(load_split(archive, split), *written[split], CIFAR10_CLASSES)
    # A folder that holds the archive finds it too.
    (tmp_path / "only").mkdir()
    os.replace(archive, tmp_path / "only" / "cifar-10-python.tar.gz")
    assert len(load_split(tmp_path / "only", "train")) == 40
    assert not (tmp_path / "only" / "cifar-10-batches-py").exists()  # nothing was unpacked


@pytest.mark.parametrize("packed", [False, True])
def test_cifar100_reads_fine_and_coarse_labels_from_folder_or_archive(tmp_path, packed):
    written = write_cifar100(tmp_path / "cifar-100-python")
    source = tmp_path / "cifar-100-python"
    if packed:
        source = write_archive(source, tmp_path / "cifar-100-python.tar.gz")
    for split in ("train", "test"):
        loaded = load_split(source, split)
        images, fine, coarse = written[split]
        assert_image_set(loaded, images, fine, [f"fine{i}" for i in range(100)])
        np.testing.assert_array_equal(loaded.coarse_labels, coarse)
        assert loaded.coarse_classes == [f"coarse{i}" for i in range(20)]
        assert "CIFAR-100" in loaded.source


@pytest.mark.parametrize("suffix", [".png", ".bmp"])
def test_image_folder_in_lossless_formats_reads_back_exactly_with_sorted_classes(tmp_path, suffix):
    written = write_image_folder(tmp_path, {"dog": 3, "cat": 4, "ant": 2}, suffix=suffix)
    loaded = load_split(tmp_path, "train", cache_dir=tmp_path / "cache")
    assert loaded.classes == ["ant", "cat", "dog"]  # sorted, whatever the creation order
    np.testing.assert_array_equal(loaded.labels, [0, 0, 1, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(
        loaded.images, np.concatenate([written["ant"], written["cat"], written["dog"]])
    )


def test_image_folder_converts_jpeg_grayscale_and_other_sizes_to_32px_rgb(tmp_path):
    (tmp_path / "test" / "a").mkdir(parents=True)
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
    Image.fromarray(np.stack([smooth] * 3, -1)).save(tmp_path / "test/a/1.jpg", quality=95)
    Image.fromarray(smooth, mode="L").save(tmp_path / "test/a/2.jpeg")
    Image.fromarray(np.zeros((64, 48, 4), np.uint8), mode="RGBA").save(tmp_path / "test/a/3.png")
    (tmp_path / "test/a/notes.txt").write_text("not an image")
    loaded = load_split(tmp_path, "test", cache_dir=None)
    assert loaded.images.shape == (3, 32, 32, 3)  # RGB, resized to 32x32, text file ignored
    assert np.abs(loaded.images[0].astype(int) - smooth[..., None]).max() < 12  # JPEG is lossy
    gray = loaded.images[1].astype(int)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert np.abs(gray[..., 0] - smooth).max() < 12
    np.testing.assert_array_equal(loaded.images[2], 0)


def test_image_folder_bad_image_is_named(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train/a/broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match="broken.png: cannot decode image"):
        load_split(tmp_path, "train", cache_dir=None)


def test_image_folder_cache_reused_and_rebuilt_on_change(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "data", {"a": 3, "b": 3})
    cache = tmp_path / "cache"
    first = load_split(tmp_path / "data", "train", cache_dir=cache)
    decoded = []
    real_decode = data._decode_parallel
    monkeypatch.setattr(
        data, "_decode_parallel", lambda paths: decoded.append(len(paths)) or real_decode(paths)
    )
    again = load_split(tmp_path / "data", "train", cache_dir=cache)
    assert decoded == []  # served from the cache
    np.testing.assert_array_equal(again.images, first.images)

    # Changing a file (its size and mtime) invalidates the cache.
    replacement = np.full((32, 32, 3), 7, np.uint8)
    Image.fromarray(replacement).save(tmp_path / "data/train/b/0001.png")
    future = time.time() + 10
    os.utime(tmp_path / "data/train/b/0001.png", (future, future))
    changed = load_split(tmp_path / "data", "train", cache_dir=cache)
    assert decoded == [6]
    np.testing.assert_array_equal(changed.images[4], replacement)

    # So do added files and classes.
    write_image_folder(tmp_path / "data", {"c": 2}, seed=5)
    grown = load_split(tmp_path / "data", "train", cache_dir=cache)
    assert decoded == [6, 8] and grown.classes == ["a", "b", "c"]


def test_image_folder_broken_cache_is_rebuilt(tmp_path):
    write_image_folder(tmp_path / "data", {"a": 2})
    cache = tmp_path / "cache"
    first = load_split(tmp_path / "data", "train", cache_dir=cache)
    for npy in cache.rglob("images.npy"):
        npy.write_bytes(b"garbage")
    np.testing.assert_array_equal(
        load_split(tmp_path / "data", "train", cache_dir=cache).images, first.images
    )


def test_parallel_decode_matches_serial(tmp_path):
    write_image_folder(tmp_path, {"a": 30, "b": 30})
    paths = sorted(str(p) for p in tmp_path.rglob("*.png"))
    np.testing.assert_array_equal(
        data._decode_parallel(paths * 40, workers=2), data.decode_images(paths * 40)
    )


def test_locate_recognises_each_layout(tmp_path):
    write_cifar10(tmp_path / "c10" / "cifar-10-batches-py", per_batch=2, test_count=2)
    write_cifar100(tmp_path / "c100" / "cifar-100-python", 10, 10)
    write_image_folder(tmp_path / "folder", {"x": 1})
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("hi")
    assert locate(tmp_path / "c10").kind == "cifar10"
    assert locate(tmp_path / "c100").kind == "cifar100"
    assert locate(tmp_path / "folder").kind == "image-folder"
    assert locate(tmp_path / "empty") is None
    assert locate(tmp_path / "file.txt") is None
    assert locate(tmp_path / "missing") is None


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        load_split(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no dataset"):
        load_split(tmp_path / "empty")
    (tmp_path / "fake.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="not a readable tar archive"):
        load_split(tmp_path / "fake.tar.gz")
    write_image_folder(tmp_path / "trainonly", {"a": 1})
    with pytest.raises(UserError, match="has no test/ folder"):
        load_split(tmp_path / "trainonly", "test", cache_dir=None)
    with pytest.raises(UserError, match="unknown split"):
        load_split(tmp_path / "trainonly", "validation", cache_dir=None)


def _archive_with(path, member: tarfile.TarInfo, payload: bytes = b"") -> Path:
    """A gzipped tar whose one member is `member` (inside cifar-10-batches-py/)."""
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(payload) if payload else None)
    return path


def test_archive_member_that_is_a_link_is_refused(tmp_path):
    link = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = _archive_with(tmp_path / "cifar-10-python.tar.gz", link)
    with pytest.raises(UserError, match="data_batch_1' is not a regular file"):
        data._archive_members(archive)


def test_archive_member_over_the_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_MEMBER_BYTES", 100)
    member = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    member.size = 101
    archive = _archive_with(tmp_path / "cifar-10-python.tar.gz", member, b"x" * 101)
    with pytest.raises(UserError, match="has 101 bytes, more than the 100"):
        data._archive_members(archive)


def test_hostile_batch_is_refused(tmp_path):
    write_cifar10(tmp_path, per_batch=2, test_count=2)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    import pickle

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(UserError, match="posix.system|os.system"):
        load_split(tmp_path, "test")
    assert not (tmp_path / "pwned").exists()


def test_resolve_uses_environment_then_data_folder(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "envdata" / "cifar-10-batches-py", per_batch=2, test_count=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUDGETNET_DATA", str(tmp_path / "envdata"))
    assert resolve_source(None).path == tmp_path / "envdata" / "cifar-10-batches-py"
    monkeypatch.delenv("BUDGETNET_DATA")
    write_cifar10(tmp_path / "data" / "cifar-10-batches-py", per_batch=2, test_count=2)
    assert resolve_source("cifar10").path == data.DEFAULT_DATA_DIR / "cifar-10-batches-py"


def test_download_failure_names_the_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BUDGETNET_DATA", raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", offline)
    with pytest.raises(UserError) as info:
        load_split(None)
    message = str(info.value)
    assert "looked at data, data/cifar10" in message
    assert "network is unreachable" in message and "--data" in message
    with pytest.raises(UserError, match="no cifar100 data found"):
        load_split("cifar100", download=False)


def test_download_success_is_read_with_our_reader(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BUDGETNET_DATA", raising=False)
    calls = []

    def fake_download(url, root, filename, md5):
        calls.append((url, filename, md5))
        write_cifar10(tmp_path / root / "cifar-10-batches-py", per_batch=3, test_count=4)

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", fake_download)
    loaded = load_split(None, "test")
    assert len(loaded) == 4 and calls[0][1] == "cifar-10-python.tar.gz"
    assert calls[0][0].startswith("https://")
    load_split(None, "train")
    assert len(calls) == 1  # found locally the second time


def test_cap_per_class_keeps_first_n_in_order():
    labels = np.array([0, 1, 0, 2, 1, 0, 0, 2, 1, 1])
    np.testing.assert_array_equal(cap_per_class(labels, 2), [0, 1, 2, 3, 4, 7])
    np.testing.assert_array_equal(cap_per_class(labels, 10), np.arange(10))
    with pytest.raises(UserError):
        cap_per_class(labels, 0)


def test_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 50, 50, 50, 50, 50])
    train, val = split_train_val(labels, 150, seed=3)
    assert len(val) == 150 and len(train) == 600
    assert len(np.intersect1d(train, val)) == 0 and len(np.union1d(train, val)) == 750
    np.testing.assert_array_equal(np.bincount(labels[val]), [20] * 5 + [10] * 5)
    np.testing.assert_array_equal(split_train_val(labels, 150, seed=3)[1], val)
    assert not np.array_equal(split_train_val(labels, 150, seed=4)[1], val)
    _, fraction = split_train_val(labels, 0.2, seed=0)
    assert len(fraction) == 150
    train_all, none = split_train_val(labels, 0, seed=0)
    assert len(none) == 0 and len(train_all) == 750
    with pytest.raises(UserError, match="does not fit"):
        split_train_val(labels, 745, seed=0)


@pytest.mark.parametrize("count,expected", [(2000, 200), (50_000, 5000), (80_000, 5000)])
def test_the_default_validation_split_is_a_tenth_of_the_data_at_most_5000(count, expected):
    labels = np.arange(count) % 10
    assert len(split_train_val(labels, None, seed=0)[1]) == expected


def test_a_small_subset_trains_with_the_default_validation_split(cifar, tmp_path, run_main):
    """`--max-per-class 20 --epochs 1` on its own: no --val-size needed (the old default of
    5,000 did not fit a small subset)."""
    run = tmp_path / "run"
    flags = ["--data", str(cifar), "--max-per-class", "20", "--epochs", "1", "--run-dir", str(run)]
    flags += ["--blocks", "1", "1", "--channels", "8", "16", "--batch-size", "32", "--aa", ""]
    result = run_main("code/train.py", *flags, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "180 train / 20 val images" in result.stdout
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["settings"]["val_size"] == recorded["data"]["val_size"] == 20


def test_split_rounds_uneven_shares_to_the_exact_count():
    labels = np.repeat(np.arange(3), [7, 5, 3])
    for size in range(3, 13):
        train, val = split_train_val(labels, size, seed=0)
        assert len(val) == size
        assert set(np.unique(labels[val])) == {0, 1, 2} == set(np.unique(labels[train]))


def test_normalization_matches_numpy_and_states_its_source():
    images = np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    norm = Normalization.from_images(images, "test images")
    pixels = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(norm.mean, pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(norm.std, pixels.std(0), rtol=1e-10)
    assert "300 training images: test images" in norm.source
    assert Normalization.from_dict(norm.to_dict()) == norm


def test_load_splits_holds_out_validation_from_train(tmp_path):
    write_cifar10(tmp_path, per_batch=40, test_count=30)  # 200 train images, 20 per class
    splits = load_splits(tmp_path, val_size=50, seed=1)
    assert len(splits.train) == 150 and len(splits.val) == 50 and len(splits.test) == 30
    full = load_split(tmp_path, "train")
    seen = {bytes(image) for image in full.images}
    held = {bytes(image) for image in splits.val.images}
    assert held <= seen and held.isdisjoint(bytes(image) for image in splits.train.images)
    expected = Normalization.from_images(splits.train.images, "").mean
    assert splits.normalization.mean == expected  # statistics of train only
    assert "held out" in splits.train.source and "validation" in splits.val.source
    assert splits.provenance == DataProvenance(
        source=str(tmp_path), kind="cifar10", val_size=50, max_per_class=None, seed=1,
        train_splits="train",
    )  # fmt: skip
    # config.yaml's `data` and a release's provenance["data"], in this order
    assert list(splits.provenance.to_dict().items()) == [
        ("source", str(tmp_path)), ("kind", "cifar10"), ("val_size", 50),
        ("max_per_class", None), ("seed", 1), ("train_splits", "train"),
    ]  # fmt: skip

    capped = load_splits(tmp_path, val_size=0, max_per_class=5)
    assert splits.test.classes == capped.train.classes
    assert capped.val is None and len(capped.train) == 50
    np.testing.assert_array_equal(capped.train.class_counts(), [5] * 10)


def test_load_splits_image_folder_without_test(tmp_path):
    write_image_folder(tmp_path, {"a": 6, "b": 6})
    splits = load_splits(tmp_path, val_size=4, cache_dir=tmp_path / "cache")
    assert splits.test is None and len(splits.val) == 4
    with pytest.raises(UserError, match="no test split to train on"):
        load_splits(tmp_path, val_size=4, train_splits="train+test", cache_dir=None)


def test_load_splits_refuses_mismatched_classes(tmp_path):
    write_image_folder(tmp_path, {"a": 4, "b": 4})
    write_image_folder(tmp_path, {"a": 2, "c": 2}, split="test")
    with pytest.raises(UserError, match="test classes"):
        load_splits(tmp_path, val_size=0, cache_dir=None)


def test_named_dataset_skips_an_image_folder_of_another_size(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "ten", {c: 1 for c in CIFAR10_CLASSES})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUDGETNET_DATA", str(tmp_path / "ten"))
    assert resolve_source("cifar10").path == tmp_path / "ten"
    with pytest.raises(UserError, match="no cifar100 data found"):
        resolve_source("cifar100", download=False)


def test_load_splits_reads_every_split_from_the_source_it_was_given(tmp_path):
    """The source is located once: every split comes from that `Source`, even where looking
    its path up again would find another data set (here the CIFAR batches beside the image
    folders, which `locate` prefers)."""
    write_cifar10(tmp_path / "cifar-10-batches-py")
    write_image_folder(tmp_path, {"a": 6, "b": 6})
    write_image_folder(tmp_path, {"a": 2, "b": 2}, split="test")
    assert locate(tmp_path).kind == "cifar10"
    splits = load_splits(Source("image-folder", tmp_path), val_size=4, cache_dir=None)
    assert splits.train.classes == ["a", "b"] and len(splits.train) == 8
    assert len(splits.test) == 4 and "image folder" in splits.test.source
    assert (splits.provenance.kind, splits.provenance.source) == ("image-folder", str(tmp_path))


def test_the_normalisation_is_chosen_by_load_splits_and_can_be_chosen_again(tmp_path):
    write_cifar10(tmp_path, per_batch=40, test_count=30)
    own = load_splits(tmp_path, val_size=50, seed=1)
    imagenet = load_splits(tmp_path, val_size=50, seed=1, normalize="imagenet")
    assert imagenet.normalization == imagenet_normalization()
    assert imagenet.normalization.mean == pytest.approx((0.485, 0.456, 0.406))
    assert (own.normalize, imagenet.normalize) == ("data", "imagenet")
    assert imagenet.provenance == own.provenance  # the choice is the config's, not the data's
    assert own.normalized("data") is own
    assert imagenet.normalized("data").normalization == own.normalization
    assert own.normalized("imagenet").normalization == imagenet.normalization
    with pytest.raises(UserError, match="normalize 'cifar'"):
        load_splits(tmp_path, val_size=50, normalize="cifar")
