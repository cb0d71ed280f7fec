"""Hostile files and paths: files that are not regular, OS errors on a user's path, and image
files that are not what their name says. One test per class (the issue's example and other
members), and property-based fuzzing of the one image-opening function.

Every command-line refusal is checked the same way: exit code 2, one line on stderr, no
traceback, nothing written. The fuzzing runs a few hundred examples per property;
BUDGETNET_FUZZ_EXAMPLES=20000 runs more.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from budgetnet import runs
from budgetnet.data.sources import (
    MAX_IMAGE_PIXELS,
    UPLOAD_FORMATS,
    decode_images,
    load_split,
    read_image,
)
from budgetnet.errors import UserError
from budgetnet.files import check_output_file
from budgetnet.models.checkpoint import load_state

from cifar_files import random_images, write_image_folder
from conftest import REPO
from refusals import fuzz_settings, mutated, refused
from tiny import TINY_SPEC, TRAIN_FLAGS, tiny_config

FUZZ = fuzz_settings()
TOO_LONG = "x" * 300  # one path component longer than any file system's NAME_MAX (255)


def one_line_exit_2(result: subprocess.CompletedProcess, match: str) -> str:
    """The command ended with exit code 2 and one line on stderr naming `match`."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and match in lines[0], lines[0]
    return lines[0]


def tree(folder: Path) -> list[str]:
    """Everything below `folder` (links not followed), to show that nothing was written."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def within(seconds: float, call):
    """`call()`'s result, or a failure if it has not returned after `seconds` (a read that
    waits on a pipe forever fails the test rather than hanging the suite)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, depth: int, colour: int, scanlines: bytes, **kw) -> bytes:
    """A PNG built chunk by chunk (with valid CRCs): what PIL cannot write, such as 16-bit
    RGB, or headers no encoder would write (`idat`: the image data as stored, not
    compressed here)."""
    header = struct.pack(
        ">IIBBBBB", width, height, depth, colour, 0, kw.get("filter", 0), kw.get("interlace", 0)
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + b"".join(_chunk(kind, data) for kind, data in kw.get("extra", []))
        + _chunk(b"IDAT", kw.get("idat", zlib.compress(scanlines)))
        + _chunk(b"IEND", b"")
    )


def image_folder(root: Path, files: dict[str, bytes], split: str = "train") -> Path:
    """ROOT/<split>/<class>/<file> holding `files` ({"class/name": bytes}) and one good PNG."""
    for name, data in {"a/good.png": png_bytes(random_images(1)[0]), **files}.items():
        path = root / split / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


# --------------------------------------------------------------------------------------------
# Files that are not regular: never waited on, refused before a byte is read


def test_fifo_last_pt_on_resume_is_refused_not_waited_on(cifar, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    runs.write_config(
        run, {"settings": tiny_config(cifar, tmp_path).flat(), "model": TINY_SPEC.to_dict()}
    )
    os.mkfifo(run / "last.pt")
    before = tree(tmp_path)
    result = subprocess.run(
        [sys.executable, "code/train.py", "--resume", str(run)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
        env={**os.environ, "BUDGETNET_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    one_line_exit_2(result, "not a regular file")
    assert tree(tmp_path) == before


def test_other_files_that_are_not_regular_are_refused(tmp_path):
    (tmp_path / "zero.pt").symlink_to("/dev/zero")  # a device: endless bytes
    refused(lambda: within(30, lambda: load_state(tmp_path / "zero.pt")), "not a regular file")
    (tmp_path / "dir.pt").mkdir()
    refused(lambda: load_state(tmp_path / "dir.pt"), "is a directory")
    os.mkfifo(tmp_path / "pipe.png")
    refused(lambda: within(30, lambda: read_image(tmp_path / "pipe.png")), "not a regular file")
    # A FIFO in an image folder's cache is a broken cache: decoded again, never waited on.
    write_image_folder(tmp_path / "data", {"a": 2})
    cache = tmp_path / "cache"
    first = load_split(tmp_path / "data", "train", cache_dir=cache)
    for npy in cache.rglob("images.npy"):
        npy.unlink()
        os.mkfifo(npy)
    again = within(60, lambda: load_split(tmp_path / "data", "train", cache_dir=cache))
    np.testing.assert_array_equal(again.images, first.images)


def test_load_state_still_reads_a_state_and_names_a_missing_one(tmp_path):
    import torch

    from budgetnet.models.checkpoint import save_state

    save_state(tmp_path / "last.pt", {"x": torch.ones(2), "epoch": 3})
    assert load_state(tmp_path / "last.pt")["epoch"] == 3
    refused(lambda: load_state(tmp_path / "none.pt"), "no resume state")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not a zip")
    refused(lambda: load_state(tmp_path / "junk.pt"), "unreadable resume state")


# --------------------------------------------------------------------------------------------
# OS errors on a user's path: one line, exit 2, whatever the errno


def test_names_longer_than_the_file_system_allows_are_one_line(
    tmp_path, pkl, release, run_main, cifar
):
    before = tree(tmp_path)
    long_out = tmp_path / f"{TOO_LONG}.csv"
    result = run_main(
        "inference.py", "--pkl", str(pkl), "--out", str(long_out), "--checkpoint", str(release)
    )
    one_line_exit_2(result, "File name too long")
    result = run_main(
        "inference.py", "--pkl", str(pkl), "--out", str(tmp_path / "s.csv"),
        "--checkpoint", str(tmp_path / TOO_LONG),
    )  # fmt: skip
    one_line_exit_2(result, "too long")
    result = run_main("code/train.py", "--resume", str(tmp_path / TOO_LONG))
    one_line_exit_2(result, "File name too long")
    result = run_main(
        "code/train.py", "--data", str(cifar), *TRAIN_FLAGS, "--run-dir", str(tmp_path / TOO_LONG)
    )
    one_line_exit_2(result, "File name too long")
    assert tree(tmp_path) == before


def test_run_dir_that_is_an_existing_file_is_refused_before_training(
    tmp_path, cifar, release, run_main
):
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    before = tree(tmp_path)
    result = run_main("code/train.py", "--data", str(cifar), *TRAIN_FLAGS, "--run-dir", str(taken))
    one_line_exit_2(result, "exists and is not a directory")
    result = run_main(
        "code/train.py", "--data", str(cifar), *TRAIN_FLAGS, "--run-dir", str(taken / "sub")
    )
    one_line_exit_2(result, "Not a directory")
    result = run_main("code/evaluate.py", "--checkpoint", str(release), "--report-dir", str(taken))
    one_line_exit_2(result, "exists and is not a directory")
    assert tree(tmp_path) == before and taken.read_text() == "keep me\n"


def test_run_cli_turns_any_os_error_into_one_line(capsys):
    from budgetnet.errors import run_cli

    def main(argv):
        raise OSError(36, "File name too long", "a" * 1000)

    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: aaa") and len(err) < 250
    assert err.rstrip().endswith("File name too long")


def test_symlink_loops_in_an_image_folder_are_one_line(tmp_path, run_main):
    root = image_folder(tmp_path / "data", {})
    (root / "train/a/loop.png").symlink_to("loop.png")  # ELOOP when followed
    refused(lambda: load_split(root, "train", cache_dir=None), "loop.png: cannot read")
    result = run_main("code/inspect_data.py", "--data", str(root), "--val-size", "0")
    one_line_exit_2(result, "Too many levels of symbolic links")
    (root / "train/a/loop.png").unlink()

    (root / "train/b").symlink_to("b")  # a class folder that is a loop
    refused(lambda: load_split(root, "train", cache_dir=None), "b: cannot read")
    (root / "train/b").unlink()

    # Links back up the tree are not walked into: the walk is two levels deep.
    (root / "train/a/up").symlink_to("../..")
    (root / "train/a/up.png").symlink_to("..")
    (root / "train/c").symlink_to(".")
    loaded = within(60, lambda: load_split(root, "train", cache_dir=None))
    assert loaded.classes == ["a", "c"] and len(loaded) == 1

    # An --out that is a link loop is refused before any model runs.
    (tmp_path / "out.csv").symlink_to("out.csv")
    message = refused(lambda: check_output_file(tmp_path / "out.csv", "--out"), "cannot write")
    assert "Too many levels of symbolic links" in message


def test_file_names_that_are_not_utf8(tmp_path):
    odd = os.fsdecode(b"caf\xe9-\xff.png")  # Latin-1 bytes: not UTF-8
    pixels = random_images(2, seed=4)
    root = tmp_path / "data"
    write_image_folder(root, {"a": 0})
    (root / "train/a" / odd).write_bytes(png_bytes(pixels[0]))
    (root / "train/a/plain.png").write_bytes(png_bytes(pixels[1]))
    cache = tmp_path / "cache"
    loaded = load_split(root, "train", cache_dir=cache)  # also writes the cache's manifest
    np.testing.assert_array_equal(loaded.images, pixels[[0, 1]])  # sorted: "caf\udce9" first
    np.testing.assert_array_equal(load_split(root, "train", cache_dir=cache).images, pixels)
    # A class's name becomes a label in model.json and in reports: it must be text.
    (root / "train" / os.fsdecode(b"\xffclass")).mkdir()
    refused(lambda: load_split(root, "train", cache_dir=None), "must be UTF-8")


def test_a_path_that_is_not_utf8_prints_without_a_traceback(tmp_path):
    root = tmp_path / os.fsdecode(b"data-\xff")
    write_image_folder(root, {"a": 3, "b": 3})
    result = subprocess.run(
        [sys.executable, b"code/inspect_data.py", b"--data", os.fsencode(root),
         b"--val-size", b"2"],
        cwd=REPO, capture_output=True, timeout=240,
        env={**os.environ, "BUDGETNET_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert b"Traceback" not in result.stderr and b"images, per class [2, 2]" in result.stdout


# --------------------------------------------------------------------------------------------
# Images: only the formats we document, decoded to 8 bits correctly, any failure one line


def _saved_as(kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("F" if kind == "SPIDER" else "RGB", (8, 8)).save(buffer, format=kind)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["DDS", "TIFF", "SPIDER", "ICNS", "TGA", "WEBP"])
def test_other_formats_named_png_are_refused_by_the_loader(tmp_path, kind):
    root = image_folder(tmp_path, {"a/fake.png": _saved_as(kind)})
    refused(
        lambda: load_split(root, "train", cache_dir=None),
        "fake.png: cannot decode image \\(not a PNG, JPEG or BMP file\\)",
    )


def test_a_disguised_image_ends_a_command_in_one_line(tmp_path, run_main):
    root = image_folder(tmp_path / "data", {"a/fake.png": _saved_as("DDS")})
    before = tree(tmp_path)
    result = run_main("code/inspect_data.py", "--data", str(root), "--val-size", "0")
    one_line_exit_2(result, "fake.png: cannot decode image")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("kind", ["DDS", "TIFF", "SPIDER"])
def test_other_formats_named_png_are_refused_by_the_demo(tmp_path, release, kind):
    path = tmp_path / "upload.png"
    path.write_bytes(_saved_as(kind))
    refused(lambda: decode_images([str(path)], UPLOAD_FORMATS), "cannot decode image")
    web_app = pytest.importorskip("budgetnet.evaluation.web_app", reason="gradio is not installed")
    from budgetnet.evaluation.ensemble import load_ensemble

    classify = web_app.Classifier(load_ensemble([release], web_app.CPU), tta=1)
    with pytest.raises(web_app.gr.Error) as info:
        classify(str(path))
    assert "cannot decode image" in str(info.value.message) and "\n" not in info.value.message
    # gradio's own preprocessing does not open the upload with PIL's every plugin first
    from gradio.data_classes import ImageData

    component = web_app.unopened_uploads(
        web_app.gr.Image(type="filepath", image_mode=None, format="png")
    )
    assert component.preprocess(ImageData(path=str(path), orig_name="upload.png")) == str(path)


def test_the_demo_takes_webp_and_gif_uploads(tmp_path):
    for kind in ("WEBP", "GIF"):
        path = tmp_path / f"upload.{kind.lower()}"
        Image.new("RGB", (40, 20), (200, 100, 0)).save(path, format=kind)
        pixels = decode_images([str(path)], UPLOAD_FORMATS)
        assert pixels.shape == (1, 32, 32, 3)
        assert np.abs(pixels[0].astype(int) - [200, 100, 0]).max() < 16


def test_16_bit_greyscale_decodes_to_its_grey_not_white(tmp_path):
    levels = np.arange(256, dtype=np.uint16).reshape(16, 16)
    grey = (levels << 8) | 0x7F  # 16-bit values whose high byte is 0..255
    root = tmp_path / "data"
    (root / "train/a").mkdir(parents=True)
    (root / "train/a/mid.png").write_bytes(png_bytes(np.full((32, 32), 32768, np.uint16)))
    (root / "train/a/ramp.png").write_bytes(png_bytes(grey))
    assert Image.open(root / "train/a/mid.png").mode.startswith("I;16")
    loaded = load_split(root, "train", cache_dir=None)
    np.testing.assert_array_equal(loaded.images[0], 128)  # not 255
    np.testing.assert_array_equal(read_image(root / "train/a/ramp.png")[..., 1], levels)
    # 16-bit RGB: PIL already hands it over as 8-bit RGB
    rgb = raw_png(2, 2, 16, 2, (b"\x00" + struct.pack(">HHH", 32768, 16384, 65535) * 2) * 2)
    (root / "rgb16.png").write_bytes(rgb)
    np.testing.assert_array_equal(read_image(root / "rgb16.png")[0, 0], [128, 64, 255])


def test_32_bit_and_float_modes_are_scaled_not_clipped(tmp_path):
    """Modes that the documented formats do not produce, read through another format list:
    I as 16-bit data, F as 0..1."""
    Image.fromarray(np.full((4, 4), 32768, np.int32)).save(tmp_path / "i.tif")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_array_equal(read_image(tmp_path / "i.tif", ("TIFF",)), 128)
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif", ("TIFF",)), 128)


def test_truncated_and_corrupt_pngs_are_one_line(tmp_path, run_main):
    good = png_bytes(random_images(1, seed=3)[0])
    flipped = bytearray(good)
    flipped[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    cases = {
        "a/truncated.png": good[: len(good) // 2],
        "a/crc.png": bytes(flipped),
        "a/zlib.png": raw_png(8, 8, 8, 2, b"", idat=b"\x78\x9c garbage"),
        "a/empty.png": b"",
        "a/header_only.png": good[:8],
    }
    for name, data in cases.items():
        path = tmp_path / "one" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        refused(lambda path=path: read_image(path, UPLOAD_FORMATS), "cannot decode image")
    root = image_folder(tmp_path / "data", {"a/truncated.png": cases["a/truncated.png"]})
    result = run_main("code/inspect_data.py", "--data", str(root), "--val-size", "0")
    one_line_exit_2(result, "truncated.png: cannot decode image")


def test_the_pixel_cap_still_holds_before_decoding(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(raw_png(5000, 5000, 8, 0, b""))  # 25M pixels, no data for them
    refused(lambda: read_image(path), "an image may have")
    path.write_bytes(raw_png(2**31 - 1, 2**31 - 1, 8, 6, b""))  # PIL's own limit too
    refused(lambda: read_image(path), "an image may have")


# --------------------------------------------------------------------------------------------
# Fuzzing the image-opening function: a uint8 (H, W, 3) array or a one-line UserError


def _valid_images() -> list[bytes]:
    pixels = random_images(1, seed=7)[0][:8, :12]
    out = []
    for kind, mode in [("PNG", "RGB"), ("PNG", "P"), ("PNG", "LA"), ("JPEG", "RGB"),
                       ("BMP", "RGB"), ("GIF", "P"), ("WEBP", "RGB")]:  # fmt: skip
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buffer, format=kind)
        out.append(buffer.getvalue())
    out.append(png_bytes(np.full((6, 5), 40000, np.uint16)))
    return out


_VALID_IMAGES = _valid_images()


def _decode_or_refuse(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.png"
    path.write_bytes(data)
    try:
        pixels = read_image(path, UPLOAD_FORMATS)
    except UserError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600, str(exc)
        return
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and min(pixels.shape[:2]) >= 1
    assert pixels.shape[0] * pixels.shape[1] <= MAX_IMAGE_PIXELS


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_decode_or_are_refused(tmp_path, data):
    _decode_or_refuse(tmp_path, data)
    _decode_or_refuse(tmp_path, b"\x89PNG\r\n\x1a\n" + data)


@FUZZ
@given(
    st.sampled_from(_VALID_IMAGES),
    st.lists(st.tuples(st.integers(0, 10**5), st.sampled_from("rid"), st.integers(0, 255)),
             min_size=1, max_size=8),
)  # fmt: skip
def test_fuzz_mutated_images_decode_or_are_refused(tmp_path, valid, edits):
    _decode_or_refuse(tmp_path, bytes(mutated(bytearray(valid), edits)))


_SIDES = st.integers(0, 40) | st.sampled_from([4096, 4097, 2**16, 2**31 - 1])


@FUZZ
@given(
    _SIDES, _SIDES,
    st.sampled_from([1, 2, 4, 8, 16, 3, 0, 32]), st.sampled_from([0, 2, 3, 4, 6, 1, 7]),
    st.binary(max_size=3000), st.integers(0, 2), st.integers(0, 2),
    st.lists(st.tuples(st.sampled_from([b"PLTE", b"tRNS", b"gAMA", b"iCCP", b"sBIT", b"acTL"]),
                       st.binary(max_size=40)), max_size=3),
)  # fmt: skip
def test_fuzz_png_headers_and_data_with_valid_crcs(
    tmp_path, width, height, depth, colour, scanlines, filter_, interlace, extra
):
    """Past the CRC checks, into PIL's PNG decoder: any header fields, any image data."""
    data = raw_png(
        width, height, depth, colour, scanlines, filter=filter_, interlace=interlace, extra=extra
    )
    _decode_or_refuse(tmp_path, data)
