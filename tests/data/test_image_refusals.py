"""Image files and image folders (budgetnet.data.sources): only the documented formats,
decoded to 8 bits correctly, capped in pixels before decoding, folders walked without
following link loops, names that are not UTF-8; any failure one line. Property-based fuzzing
of the one image-opening function (a few hundred examples; BUDGETNET_FUZZ_EXAMPLES=20000 runs
more)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from budgetnet.data.sources import (
    MAX_IMAGE_PIXELS,
    UPLOAD_FORMATS,
    decode_images,
    load_split,
    read_image,
)
from budgetnet.errors import UserError
from budgetnet.files import check_output_file

from cifar_files import random_images, write_image_folder
from conftest import REPO
from refusals import fuzz_settings, mutated, one_line_exit_2, refused, tree, within
from refusals import saved_as as _saved_as

FUZZ = fuzz_settings()


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


def test_huge_png_is_refused_before_decoding(tmp_path):
    from PIL import Image

    path = tmp_path / "bomb.png"
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", 20000, 20000)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    refused(lambda: decode_images([str(path)]), "an image may have")


# --------------------------------------------------------------------------------------------
# Image folders: link loops and names that are not UTF-8


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
