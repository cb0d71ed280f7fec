"""CIFAR archives and batch files (budgetnet.data.sources): archive headers that tarfile would
read whole into memory are refused from the header, ordinary archives and batches still load."""

from __future__ import annotations

import tarfile
import tracemalloc
import zlib

import numpy as np
import pytest

from budgetnet.data.sources import load_split

from cifar_files import write_archive, write_cifar10
from refusals import refused


def _gnu_header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _with_checksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % (sum(block) & 0o7777777)
    return bytes(block)


def _old_gnu_sparse_chain(blocks: int) -> bytes:
    """A GNU sparse member whose header says "extended", followed by extension blocks that all
    say so too, each with 21 map entries: tarfile's loop keeps reading and storing them."""
    header = bytearray(_gnu_header("cifar-10-batches-py/data_batch_1", tarfile.GNUTYPE_SPARSE, 0))
    header[482] = 1  # isextended
    entry = b"00000000001\0" * 2  # offset 1, 1 byte: a non-empty entry is kept
    extension = entry * 21 + b"\1" + b"\0" * 7  # 21 entries, then isextended at byte 504
    return _with_checksum(header) + extension * blocks


def _pax_sparse_map(entries: int) -> bytes:
    """A pax GNU.sparse 1.0 member whose map, in its data, claims `entries` entries: tarfile
    reads the whole map into a list before it hands the member over."""
    pax = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": "cifar-10-batches-py/data_batch_1",
        "GNU.sparse.realsize": "1",
    }
    extended = tarfile.TarInfo._create_pax_generic_header(pax, tarfile.XHDTYPE, "utf-8")
    data = f"{10**9}\n".encode() + b"1\n" * entries
    data += b"\0" * (-len(data) % 512)
    member = _gnu_header("sparse", tarfile.REGTYPE, len(data))
    return extended + member + data


def _global_pax_flood(count: int) -> bytes:
    """Global pax headers of 60 KB each, under the cap one by one and each in front of its own
    empty member: their keys accumulate in tarfile's global headers."""
    return b"".join(
        tarfile.TarInfo._create_pax_generic_header(
            {f"k{i}": "x" * 60_000}, tarfile.XGLTYPE, "utf-8"
        )
        + _gnu_header(f"empty{i}", tarfile.REGTYPE, 0)
        for i in range(count)
    )


def _long_name_chain(count: int) -> bytes:
    """GNU long-name headers of 100 bytes each, one behind the other: tarfile follows them
    recursively, each name kept, before any member."""
    name = b"n" * 99 + b"\0"
    one = _gnu_header("././@LongLink", tarfile.GNUTYPE_LONGNAME, len(name)) + name + b"\0" * 412
    return one * count


HOSTILE_ARCHIVES = {
    # the example: 3.4 GB claimed by a GNU long-name header (tarfile allocated them all)
    "GNU long-name of 3.4 GB": (
        lambda: _gnu_header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 3_400_000_000),
        "GNU long-name header declares 3,400,000,000 bytes",
    ),
    "GNU long-link of 3.4 GB": (
        lambda: _gnu_header("././@LongLink", tarfile.GNUTYPE_LONGLINK, 3_400_000_000),
        "GNU long-link header declares 3,400,000,000 bytes",
    ),
    "pax header of 3.4 GB": (
        lambda: _gnu_header("././@PaxHeader", tarfile.XHDTYPE, 3_400_000_000),
        "pax header declares 3,400,000,000 bytes",
    ),
    "global pax header of 3.4 GB": (
        lambda: _gnu_header("././@PaxHeader", tarfile.XGLTYPE, 3_400_000_000),
        "pax header declares 3,400,000,000 bytes",
    ),
    "20 global pax headers of 60 KB": (lambda: _global_pax_flood(20), "1,048,576 in all"),
    "9 long names in a row": (lambda: _long_name_chain(9), "more than 8 extension headers"),
    "old GNU sparse chain": (lambda: _old_gnu_sparse_chain(20_000), "is sparse"),
    "pax sparse map of 10^9 entries": (lambda: _pax_sparse_map(2_000_000), "is sparse"),
}


def _gzip(head: bytes, filler_mb: int) -> bytes:
    """`head`, then `filler_mb` MB of data for tarfile to read into memory, gzip'd."""
    squeeze = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = b"a" * (1 << 20)
    parts = [squeeze.compress(head)]
    parts += [squeeze.compress(chunk) for _ in range(filler_mb)]
    return b"".join(parts) + squeeze.compress(b"\0" * 1024) + squeeze.flush()


@pytest.mark.parametrize("case", list(HOSTILE_ARCHIVES))
def test_archive_headers_tarfile_would_read_whole_are_refused_first(case, tmp_path):
    make, match = HOSTILE_ARCHIVES[case]
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(_gzip(make(), filler_mb=16))
    tracemalloc.start()
    try:
        message = refused(lambda: load_split(archive, "train"), match)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(archive) in message
    assert peak < 8 << 20, f"{peak / 1e6:.0f} MB"  # the GNU long-name example took 3.4 GB


@pytest.mark.parametrize("form", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_archives_with_long_names_still_load(form, tmp_path):
    """A CIFAR folder packed below a 150-character path: long-name (GNU) or pax headers of
    ordinary size are read as before."""
    folder = tmp_path / "cifar-10-batches-py"
    written = write_cifar10(folder, per_batch=2, test_count=3)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz", format=form) as tar:
        tar.add(folder, arcname="d" * 150 + "/cifar-10-batches-py")
    images = load_split(archive, "test")
    assert np.array_equal(images.images, written["test"][0])
    # and the official layout, through the shared helper
    (tmp_path / "plain").mkdir()
    plain = write_archive(folder, tmp_path / "plain" / "cifar-10-python.tar.gz")
    assert np.array_equal(load_split(plain, "test").images, written["test"][0])


def test_load_split_reads_the_tiny_cifar_through_the_capped_readers(cifar):
    assert len(load_split(cifar, "train", cache_dir=False)) == 200
