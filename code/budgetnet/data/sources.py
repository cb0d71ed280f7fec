"""Every way a CIFAR competitor holds data, loaded through one function.

`load_split(source, split)` returns an `ImageSet`: uint8 images (N, 32, 32, 3) in RGB/HWC
order, int64 labels and the class names, whatever the source was:

1. CIFAR-10 python batches (`cifar-10-batches-py/`), or the `cifar-10-python.tar.gz` archive
   read in place;
2. CIFAR-100 python files (`cifar-100-python/`: `train`, `test`, `meta`), or its archive; fine
   labels, with the coarse ones kept beside them;
3. image folders `ROOT/{train,test}/<class>/*.{png,jpg,jpeg,bmp}`, classes in sorted order,
   decoded in parallel once and cached as `.npy` beside a manifest of the files;
4. nothing local: torchvision's download into `./data` when the network is there.

`load_splits` adds what training needs on top: a per-class cap, a stratified, seeded
validation split held out from train, and the normalisation the run asked for. It locates the
source once (`resolve_source`) and reads every split from that `Source`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import lzma
import os
import tarfile
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from budgetnet.data.normalization import Normalization, chosen_normalization
from budgetnet.data.safe_pickle import MAX_FILE_BYTES, pickle_field, safe_loads
from budgetnet.errors import UserError, shorten
from budgetnet.files import atomic_write, open_regular_file, read_regular_file
from budgetnet.runtime import cpu_count

IMAGE_SIZE = 32
MAX_IMAGE_PIXELS = 4096 * 4096  # an image larger than this is refused before it is decoded
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# The PIL decoders an image may go through, whatever its name says: image folders hold the
# formats of IMAGE_SUFFIXES; the web demo also takes what browsers upload. No other PIL plugin
# (DDS, TIFF, ICNS, SPIDER, ...) ever parses a file handed to us.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP")
UPLOAD_FORMATS = (*IMAGE_FORMATS, "WEBP", "GIF")
MAX_IMAGE_BYTES = 128 << 20  # a 4096x4096 BMP of 32-bit pixels is 64 MiB
SPLITS = ("train", "test")
DATASET_NAMES = ("cifar10", "cifar100")
# Where `load_split(None)` looks, in order, before it tries to download (relative to the cwd).
DEFAULT_DATA_DIR = Path("data")
DATA_ENV = "BUDGETNET_DATA"
CACHE_ENV = "BUDGETNET_CACHE"
CACHE_VERSION = 1
MAX_MANIFEST_BYTES = 256 << 20  # a cache's manifest: a line per image file


@dataclass
class ImageSet:
    """Images of one split and their labels; `source` says where they came from."""

    images: np.ndarray  # uint8 (N, 32, 32, 3), RGB, HWC
    labels: np.ndarray  # int64 (N,)
    classes: list[str]
    source: str
    coarse_labels: np.ndarray | None = None  # CIFAR-100 only: int64 (N,)
    coarse_classes: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(
                f"images must be uint8 (N, 32, 32, 3), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images")
        self.labels = self.labels.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray, note: str = "") -> ImageSet:
        """The images at `index`, in that order; `note` is added to the source."""
        coarse = None if self.coarse_labels is None else self.coarse_labels[index]
        source = f"{self.source}, {note}" if note else self.source
        return ImageSet(
            self.images[index],
            self.labels[index],
            self.classes,
            source,
            coarse,
            self.coarse_classes,
        )

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))

    def joined(self, other: ImageSet) -> ImageSet:
        """This set followed by `other` (the same classes), e.g. train + test for a model
        trained on every labeled image."""
        if other.classes != self.classes:
            raise UserError(f"{other.source}: classes differ from {self.source}'s; cannot join")
        coarse = None
        if self.coarse_labels is not None and other.coarse_labels is not None:
            coarse = np.concatenate([self.coarse_labels, other.coarse_labels])
        return ImageSet(
            np.concatenate([self.images, other.images]),
            np.concatenate([self.labels, other.labels]),
            self.classes,
            f"{self.source} + {other.source}",
            coarse,
            self.coarse_classes if coarse is not None else None,
        )


# --------------------------------------------------------------------------------------------
# CIFAR python format, from a folder or straight out of the tar.gz archive


def _decode_names(names: list) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _cifar_rows_to_hwc(rows: np.ndarray, where: str) -> np.ndarray:
    """CIFAR stores each image as 3072 bytes: the red plane, then green, then blue (CHW)."""
    rows = np.asarray(rows)
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3 * IMAGE_SIZE**2:
        raise UserError(f"{where}: data must be uint8 (N, 3072), got {rows.dtype} {rows.shape}")
    return np.ascontiguousarray(rows.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1))


def _read_cifar10(read: Callable[[str], bytes], split: str, where: str) -> ImageSet:
    meta = safe_loads(read("batches.meta"), what=f"{where}/batches.meta")
    classes = _decode_names(pickle_field(meta, "label_names", f"{where}/batches.meta"))
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        batch = safe_loads(read(name), what=f"{where}/{name}")
        images.append(
            _cifar_rows_to_hwc(pickle_field(batch, "data", f"{where}/{name}"), f"{where}/{name}")
        )
        labels.append(np.asarray(pickle_field(batch, "labels", f"{where}/{name}"), dtype=np.int64))
    return ImageSet(
        np.concatenate(images),
        np.concatenate(labels),
        classes,
        f"CIFAR-10 python batches {where} ({split})",
    )


def _read_cifar100(read: Callable[[str], bytes], split: str, where: str) -> ImageSet:
    meta = safe_loads(read("meta"), what=f"{where}/meta")
    fine = _decode_names(pickle_field(meta, "fine_label_names", f"{where}/meta"))
    coarse = _decode_names(pickle_field(meta, "coarse_label_names", f"{where}/meta"))
    batch = safe_loads(read(split), what=f"{where}/{split}")
    images = _cifar_rows_to_hwc(pickle_field(batch, "data", f"{where}/{split}"), f"{where}/{split}")
    return ImageSet(
        images,
        np.asarray(pickle_field(batch, "fine_labels", f"{where}/{split}"), dtype=np.int64),
        fine,
        f"CIFAR-100 python files {where} ({split}, fine labels)",
        np.asarray(pickle_field(batch, "coarse_labels", f"{where}/{split}"), dtype=np.int64),
        coarse,
    )


_CIFAR_READERS = {"cifar10": _read_cifar10, "cifar100": _read_cifar100}
# The file whose presence tells the two python formats apart.
_CIFAR_MARKERS = {"cifar10": "batches.meta", "cifar100": "meta"}
_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


# The files of the CIFAR python formats: the only archive members ever read.
_CIFAR_MEMBERS = frozenset(
    [
        *(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "train",
        "test",
        "meta",
    ]
)
# Limits on reading an archive: the uncompressed bytes walked (CIFAR's are about 180 MB),
# the headers walked (CIFAR's have 8 or 9 members) and any one member's size.
MAX_ARCHIVE_BYTES = 1 << 30
MAX_ARCHIVE_MEMBERS = 10_000
MAX_MEMBER_BYTES = 256 << 20
# tarfile reads the data of a GNU long-name or long-link header, or of a pax header, whole into
# memory before it hands over the member they describe: their declared sizes are checked first,
# from the 512-byte header alone (a path is at most 4 KiB; CIFAR's archives have none of them).
MAX_EXTENSION_BYTES = 64 << 10  # one such header's data
MAX_EXTENSION_TOTAL = 1 << 20  # all of them in the archive (global pax headers accumulate)
MAX_EXTENSION_CHAIN = 8  # in front of one member (tarfile follows them recursively)
_EXTENSION_TYPES = (
    tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
)  # fmt: skip


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses, from its own header and before tarfile reads anything it
    declares, the headers whose data tarfile would hold in memory: extension headers (GNU long
    names and links, pax) above the limits, and sparse members (old GNU sparse headers chain
    extension blocks without end; pax sparse maps are read whole). `_proc_member` is tarfile's
    documented hook for subclasses: "can be overridden in a subclass"."""

    def _proc_member(self, tar):
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _ArchiveRefused(f"member {self.name[:80]!r} is sparse, not a regular file")
        if self.type in _EXTENSION_TYPES:
            tar.extension_chain += 1
            tar.extension_bytes += self.size
            if self.size > MAX_EXTENSION_BYTES or tar.extension_bytes > MAX_EXTENSION_TOTAL:
                kind = _EXTENSION_NAMES.get(self.type, "pax")
                raise _ArchiveRefused(
                    f"a {kind} header declares {self.size:,} bytes (at most "
                    f"{MAX_EXTENSION_BYTES:,} each, {MAX_EXTENSION_TOTAL:,} in all); not a "
                    "CIFAR archive"
                )
            if tar.extension_chain > MAX_EXTENSION_CHAIN:
                raise _ArchiveRefused(
                    f"more than {MAX_EXTENSION_CHAIN} extension headers in a row; not a CIFAR "
                    "archive"
                )
        else:
            tar.extension_chain = 0
        return super()._proc_member(tar)

    def _refuse_sparse(self, member, *args):
        raise _ArchiveRefused(f"member {member.name[:80]!r} is sparse, not a regular file")

    # pax sparse maps: 0.0, 0.1 and 1.0 (this one reads a map of any length into memory)
    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


class _BoundedTarFile(tarfile.TarFile):
    tarinfo = _BoundedTarInfo
    extension_chain = extension_bytes = 0  # counted per archive by _BoundedTarInfo


class _ArchiveRefused(Exception):
    """An archive header refused by _BoundedTarInfo (the archive's path is added above)."""


_EXTENSION_NAMES = {
    tarfile.GNUTYPE_LONGNAME: "GNU long-name",
    tarfile.GNUTYPE_LONGLINK: "GNU long-link",
}


def _folder_reader(folder: Path) -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        return read_regular_file(folder / name, MAX_FILE_BYTES, "CIFAR batch file")

    return read


def _archive_members(path: Path) -> dict[str, bytes]:
    """The CIFAR files of an archive, keyed by their name without the folder."""
    stat = path.stat()
    return _read_archive(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1)  # a gzip stream must be read whole to list it: do it once
def _read_archive(path: Path, size: int, mtime_ns: int) -> dict[str, bytes]:
    """Walk the archive's headers once, reading only CIFAR's member names, each a regular file
    (not sparse, not a link) below MAX_MEMBER_BYTES; the walk itself is bounded in bytes and
    headers, each checked before tarfile reads or skips what it declares (_BoundedTarInfo), so
    a small hostile archive cannot make it read, or hold, gigabytes."""
    members: dict[str, bytes] = {}
    try:
        with (
            open_regular_file(path, MAX_ARCHIVE_BYTES, "CIFAR archive") as handle,
            _BoundedTarFile.open(fileobj=handle, mode="r:*") as tar,
        ):
            for count, member in enumerate(iter(tar.next, None), start=1):
                # Checked before the next header is sought, which decompresses this member.
                end = member.offset_data + member.size
                if count > MAX_ARCHIVE_MEMBERS or end > MAX_ARCHIVE_BYTES:
                    raise UserError(
                        f"{path}: more than {MAX_ARCHIVE_MEMBERS:,} members or "
                        f"{MAX_ARCHIVE_BYTES:,} bytes; not a CIFAR archive"
                    )
                tar.members.clear()  # the walk keeps no list of headers
                name = Path(member.name).name
                if name not in _CIFAR_MEMBERS or name in members:
                    continue
                if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                    raise UserError(f"{path}: member {member.name[:80]!r} is not a regular file")
                if member.size > MAX_MEMBER_BYTES:
                    raise UserError(
                        f"{path}: member {member.name[:80]!r} has {member.size:,} bytes, more "
                        f"than the {MAX_MEMBER_BYTES:,} a CIFAR file may have"
                    )
                members[name] = tar.extractfile(member).read(member.size)
    except _ArchiveRefused as exc:
        raise UserError(f"{path}: {exc}") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise UserError(f"{path}: not a readable tar archive ({shorten(str(exc))})") from None
    return members


def _archive_kind(path: Path) -> str | None:
    """Which CIFAR python format an archive holds, from its member names."""
    names = _archive_members(path)
    for kind, marker in _CIFAR_MARKERS.items():
        if marker in names and ("test_batch" if kind == "cifar10" else "test") in names:
            return kind
    return None


# --------------------------------------------------------------------------------------------
# Image folders ROOT/<split>/<class>/<image>, decoded once and cached


def _listing(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as exc:
        raise UserError(f"{folder}: cannot list its files ({exc.strerror or exc})") from None


def _entry_kind(entry: os.DirEntry) -> str | None:
    """ "dir", "file" or None (anything else, or a dangling link) for a folder entry, following
    symbolic links; a link loop or an entry that cannot be examined is a UserError naming it."""
    try:
        if entry.is_dir():
            return "dir"
        return "file" if entry.is_file() else None
    except OSError as exc:  # ELOOP: a link that points, in the end, at itself
        raise UserError(f"{entry.path}: cannot read ({exc.strerror or exc})") from None


def _printable(name: str) -> str:
    """A file name as text that can be printed and written: bytes that are not UTF-8 (which
    os.scandir hands over as lone surrogates) shown as escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _scan_image_folder(split_dir: Path) -> tuple[list[str], list[tuple[str, int, int]], np.ndarray]:
    """Classes (sorted sub-folders), files as (relative path, size, mtime_ns), and labels.

    The walk is two levels deep (class folders, then their files), so a symbolic link back up
    the tree cannot make it go on forever; a link loop is refused by name. File names need not
    be UTF-8; class names, which become the model's labels, must be."""
    classes = sorted(e.name for e in _listing(split_dir) if _entry_kind(e) == "dir")
    if not classes:
        raise UserError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    for name in classes:
        if _printable(name) != name:
            raise UserError(
                f"{split_dir / _printable(name)}: a class folder's name must be UTF-8 text "
                "(it becomes the class's label); rename it"
            )
    files, labels = [], []
    for label, name in enumerate(classes):
        entries = sorted(
            (
                e
                for e in _listing(split_dir / name)
                if e.name.lower().endswith(IMAGE_SUFFIXES) and _entry_kind(e) == "file"
            ),
            key=lambda e: e.name,
        )
        for entry in entries:
            try:
                stat = entry.stat()
            except OSError as exc:
                raise UserError(f"{entry.path}: cannot read ({exc.strerror or exc})") from None
            files.append((f"{name}/{entry.name}", stat.st_size, stat.st_mtime_ns))
        labels.extend([label] * len(entries))
    if not files:
        raise UserError(
            f"{split_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders"
        )
    return classes, files, np.asarray(labels, dtype=np.int64)


def _to_8_bit(image):
    """`image` with 8 bits per channel: 16-bit modes (I;16, I;16B, ...) keep their high byte,
    I (32-bit integers, PIL's mode for some 16-bit greyscale files) is taken as 16-bit data,
    F (floats) as 0..1; PIL's own conversion would clip all of them at 255 (mid-grey becomes
    white). 16-bit RGB(A) PNGs already come out of PIL as 8-bit RGB(A)."""
    from PIL import Image

    if image.mode.startswith("I;16"):
        pixels = np.asarray(image).astype(np.uint16) >> 8
    elif image.mode == "I":
        pixels = np.clip(np.asarray(image), 0, 0xFFFF) >> 8
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        if not np.isfinite(pixels).all():
            raise ValueError("non-finite pixel values")
        pixels = np.rint(np.clip(pixels, 0.0, 1.0) * 255)
    else:
        return image
    return Image.fromarray(pixels.astype(np.uint8), "L")


def read_image(path: str | Path, formats: tuple[str, ...] = IMAGE_FORMATS) -> np.ndarray:
    """The one way an image file is opened here (image folders, the web demo's uploads): uint8
    RGB (H, W, 3), at its own size.

    `path` must be a regular file of at most MAX_IMAGE_BYTES, decoded only by the PIL plugins
    of `formats` (what the file's name says does not matter), at most MAX_IMAGE_PIXELS as its
    header says, before any pixel is decoded. Whatever the decoder raises (PIL's plugins raise
    OSError, ValueError, SyntaxError, struct.error, EOFError, ...) is a one-line UserError."""
    from PIL import Image, UnidentifiedImageError

    with (
        open_regular_file(path, MAX_IMAGE_BYTES, "picture file") as handle,
        warnings.catch_warnings(),
    ):
        # PIL warns of images above its own limit; ours, lower, refuses them just below
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(handle, formats=list(formats)) as image:  # reads the header only
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise UserError(
                        f"{path}: {image.width}x{image.height} pixels, more than the "
                        f"{MAX_IMAGE_PIXELS:,} an image may have here"
                    )
                image.load()
                pixels = np.array(_to_8_bit(image).convert("RGB"), dtype=np.uint8)
        except UserError:
            raise
        except Image.DecompressionBombError:  # PIL's own, larger limit, from the header
            raise UserError(
                f"{path}: more than the {MAX_IMAGE_PIXELS:,} pixels an image may have here"
            ) from None
        except UnidentifiedImageError:  # none of `formats` (PIL's message names the handle)
            kinds = " or ".join(
                [", ".join(formats[:-1]), formats[-1]] if len(formats) > 1 else formats
            )
            raise UserError(f"{path}: cannot decode image (not a {kinds} file)") from None
        except Exception as exc:  # any decoder failure is the file's fault
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise UserError(f"{path}: cannot decode image ({shorten(reason)})") from None
    if pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
        raise UserError(f"{path}: cannot decode image (got pixels of shape {pixels.shape})")
    return pixels


def decode_images(paths: list[str], formats: tuple[str, ...] = IMAGE_FORMATS) -> np.ndarray:
    """Decode image files (`read_image`) to uint8 RGB 32x32 (other sizes are resized
    bilinearly)."""
    from PIL import Image

    out = np.empty((len(paths), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        pixels = read_image(path, formats)
        if pixels.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
            image = Image.fromarray(pixels, "RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
            pixels = np.asarray(image)
        out[i] = pixels
    return out


def _decode_parallel(paths: list[str], workers: int | None = None) -> np.ndarray:
    workers = workers or cpu_count()  # the cores this process may use, not the machine's
    if workers == 1 or len(paths) < 2000:  # a process pool costs more than it saves here
        return decode_images(paths)
    chunk = -(-len(paths) // (workers * 4))
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return np.concatenate(list(pool.map(decode_images, chunks)))


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "budgetnet")


def _read_cache(where: Path, digest: str, classes: list[str], count: int) -> np.ndarray | None:
    """The decoded images cached in `where` if its manifest matches, else None (no cache yet,
    a stale or a broken one); both files are read through the regular-file guard."""
    try:
        stored = json.loads(read_regular_file(where / "manifest.json", MAX_MANIFEST_BYTES))
        if stored["digest"] != digest or stored["classes"] != classes:
            return None
        expected = count * IMAGE_SIZE * IMAGE_SIZE * 3
        with open_regular_file(
            where / "images.npy", expected + 4096, "cache of decoded images"
        ) as handle:
            images = np.load(handle, allow_pickle=False)
    except (UserError, OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    if images.dtype != np.uint8 or images.shape != (count, IMAGE_SIZE, IMAGE_SIZE, 3):
        return None
    return images


def _read_image_folder(split_dir: Path, cache_dir: Path | None) -> ImageSet:
    classes, files, labels = _scan_image_folder(split_dir)
    listing = "\n".join(f"{name}\t{size}\t{mtime}" for name, size, mtime in files)
    # surrogateescape: a file name that is not UTF-8 counts by its own bytes
    digest = hashlib.sha256(f"{CACHE_VERSION}\n{listing}".encode("utf-8", "surrogateescape"))
    digest = digest.hexdigest()
    source = f"image folder {split_dir}"
    where = None
    if cache_dir is not None:
        # One cache entry per folder, named by its absolute path.
        root = os.path.realpath(split_dir)
        key = hashlib.sha256(root.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        where = Path(cache_dir) / f"{_printable(split_dir.name)}-{key}"
        images = _read_cache(where, digest, classes, len(files))
        if images is not None:
            return ImageSet(images, labels, classes, source)
    images = _decode_parallel([str(split_dir / name) for name, _, _ in files])
    if where is not None:
        with atomic_write(where / "images.npy", "wb") as handle:
            np.save(handle, images)
        # The manifest goes last: an interrupted write leaves no manifest that matches.
        with atomic_write(where / "manifest.json") as handle:
            json.dump(
                {
                    "version": CACHE_VERSION,
                    "root": _printable(root),
                    "digest": digest,
                    "classes": classes,
                    "files": [[_printable(name), size, mtime] for name, size, mtime in files],
                },
                handle,
            )
    return ImageSet(images, labels, classes, source)


# --------------------------------------------------------------------------------------------
# Finding a source


@dataclass(frozen=True)
class Source:
    """A located dataset: its format, its path, and how to read one split of it."""

    kind: str  # "cifar10" | "cifar100" (python format, folder or archive) | "image-folder"
    path: Path

    def read(self, split: str, cache_dir: Path | None) -> ImageSet:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if self.kind == "image-folder":
            split_dir = self.path / split
            if not split_dir.is_dir():
                raise UserError(f"{self.path}: has no {split}/ folder")
            return _read_image_folder(split_dir, cache_dir)
        if self.path.is_file():
            members = _archive_members(self.path)

            def read(name: str) -> bytes:
                if name not in members:
                    raise UserError(f"{self.path}: archive has no member {name!r}")
                return members[name]
        else:
            read = _folder_reader(self.path)
        return _CIFAR_READERS[self.kind](read, split, str(self.path))


def locate(path: str | Path) -> Source | None:
    """The dataset at `path` (a folder or an archive), or None if it holds none we know."""
    path = Path(path)
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            kind = _archive_kind(path)
            return Source(kind, path) if kind else None
        return None
    if not path.is_dir():
        return None
    for kind, marker in _CIFAR_MARKERS.items():
        if (path / marker).is_file():
            return Source(kind, path)
    for kind in DATASET_NAMES:
        for inner in (path / _CIFAR_FOLDERS[kind], path / _CIFAR_ARCHIVES[kind]):
            if inner.exists():
                return locate(inner)
    if (path / "train").is_dir() or (path / "test").is_dir():
        return Source("image-folder", path)
    return None


def _download(dataset: str, root: Path) -> Source:
    """torchvision's CIFAR download (archive with checksum), unpacked into `root`."""
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import download_and_extract_archive

    spec = {"cifar10": CIFAR10, "cifar100": CIFAR100}[dataset]
    download_and_extract_archive(spec.url, str(root), filename=spec.filename, md5=spec.tgz_md5)
    found = locate(root / spec.base_folder)
    if found is None:
        raise UserError(f"downloaded {spec.filename} into {root}, but found no {dataset} in it")
    return found


def _folder_matches(found: Source, dataset: str) -> bool:
    """An image folder stands for a named dataset if it has that dataset's number of classes
    (so $BUDGETNET_DATA pointing at CIFAR-10 folders never passes for CIFAR-100)."""
    if found.kind != "image-folder" or not (found.path / "train").is_dir():
        return False
    classes = sum(entry.is_dir() for entry in os.scandir(found.path / "train"))
    return classes == {"cifar10": 10, "cifar100": 100}[dataset]


def resolve_source(
    source: Source | str | Path | None = None,
    *,
    download: bool = True,
    data_dir: Path = DEFAULT_DATA_DIR,
) -> Source:
    """Find the dataset that `source` names.

    `source` is a path (folder or archive), a dataset name ("cifar10", "cifar100"), None
    (= "cifar10"), or a `Source` already found, returned as it is. For a name, look at
    $BUDGETNET_DATA and `data_dir` first, then download into `data_dir` with torchvision. A
    path that exists but holds no dataset is an error.
    """
    if isinstance(source, Source):
        return source
    if source is not None and (Path(source).exists() or str(source) not in DATASET_NAMES):
        found = locate(source)
        if found is None:
            if not Path(source).exists():
                raise UserError(f"{source}: no such file or directory")
            raise UserError(
                f"{source}: holds no dataset this tool reads (expected cifar-10-batches-py/, "
                "cifar-100-python/, their .tar.gz archives, or ROOT/{train,test}/<class>/<image>)"
            )
        return found
    dataset = str(source or "cifar10")
    looked = [Path(p) for p in (os.environ.get(DATA_ENV), data_dir, data_dir / dataset) if p]
    for path in looked:
        found = locate(path)
        if found is not None and (found.kind == dataset or _folder_matches(found, dataset)):
            return found
    where = ", ".join(str(p) for p in looked)
    if not download:
        raise UserError(f"no {dataset} data found (looked at {where}); pass a path with --data")
    try:
        return _download(dataset, data_dir)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise UserError(
            f"no {dataset} data found (looked at {where}) and the download into {data_dir} "
            f"failed ({exc}); pass a path with --data PATH or set {DATA_ENV}"
        ) from None


def load_split(
    source: Source | str | Path | None = None,
    split: str = "train",
    *,
    max_per_class: int | None = None,
    cache_dir: Path | None | bool = True,
    download: bool = True,
) -> ImageSet:
    """One split of any source the module reads (see the module docstring), or of a `Source`
    already located (not looked up again).

    `cache_dir`: where decoded image folders are kept; True = $BUDGETNET_CACHE or
    ~/.cache/budgetnet, False/None = no cache.
    """
    found = resolve_source(source, download=download)
    if cache_dir is True:
        cache_dir = default_cache_dir()
    images = found.read(split, cache_dir or None)
    if max_per_class is not None:
        images = images.subset(
            cap_per_class(images.labels, max_per_class), f"first {max_per_class} per class"
        )
    return images


# --------------------------------------------------------------------------------------------
# Subsets, the validation split and normalisation


def cap_per_class(labels: np.ndarray, max_per_class: int) -> np.ndarray:
    """Indices of the first `max_per_class` images of every class, in their original order
    (as the downsampled ResNet23 project kept the first N of each class)."""
    if max_per_class < 1:
        raise UserError(f"max_per_class must be at least 1, got {max_per_class}")
    rank = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank[where] = np.arange(len(where))
    return np.flatnonzero(rank < max_per_class)


# The default validation split: a tenth of the training images, at most CIFAR's usual 5,000, so
# that a subset of a few thousand images trains without a --val-size of its own.
AUTO_VAL_FRACTION = 0.1
AUTO_VAL_MAX = 5000


def auto_val_size(count: int) -> int:
    return min(AUTO_VAL_MAX, round(AUTO_VAL_FRACTION * count))


def split_train_val(
    labels: np.ndarray, val_size: int | float | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train, val) indices; `val_size` is a count, a fraction in (0, 1), or
    None for `auto_val_size` of the images.

    Each class gives its share of the validation images (largest remainders round), drawn at
    random with `seed`. 0 means no validation split. Both index arrays are sorted, so subsets
    keep the source order.
    """
    everything = np.arange(len(labels))
    if val_size is None:
        val_size = auto_val_size(len(labels))
    if not val_size:
        return everything, everything[:0]
    classes, counts = np.unique(labels, return_counts=True)
    n_val = round(val_size * len(labels)) if isinstance(val_size, float) else int(val_size)
    share = counts * n_val / len(labels)
    take = np.floor(share).astype(np.int64)
    take[np.argsort(take - share, kind="stable")[: n_val - take.sum()]] += 1
    if n_val < len(classes) or np.any(take >= counts) or np.any(take < 1):
        raise UserError(
            f"a validation split of {val_size} does not fit {len(labels)} images of "
            f"{len(classes)} classes: every class needs images on both sides"
        )
    rng = np.random.default_rng(seed)
    val = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels == c))[:k]
            for c, k in zip(classes, take, strict=True)
        ]
    )
    return np.setdiff1d(everything, val), np.sort(val)


def hold_out(
    full: ImageSet, val_size: int | float | None, seed: int
) -> tuple[np.ndarray, np.ndarray, ImageSet | None]:
    """(train indices, validation indices, validation split or None) of `full`: the draw of
    `load_splits`, shared with evaluation, which rebuilds a run's validation split alone."""
    train_idx, val_idx = split_train_val(full.labels, val_size, seed)
    val = (
        full.subset(val_idx, f"validation split of {len(val_idx)} (seed {seed})")
        if len(val_idx)
        else None
    )
    return train_idx, val_idx, val


@dataclass(frozen=True)
class DataProvenance:
    """How a run's splits were drawn, as config.yaml's `data` and a release's
    provenance["data"] record it (evaluation redraws the validation split from it)."""

    source: str  # the located dataset's path
    kind: str  # Source.kind
    val_size: int  # images held out for validation
    max_per_class: int | None
    seed: int
    train_splits: str  # "train" or "train+test"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DataSplits:
    """What a training run reads: train, held-out validation, test, the normalisation chosen
    for them and how they were drawn."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    normalization: Normalization
    provenance: DataProvenance
    normalize: str = "data"  # the choice `normalization` came from (NORMALIZE_CHOICES)

    def normalized(self, choice: str) -> DataSplits:
        """These splits normalised by `choice`: themselves if they already are (one load can
        serve runs that normalise differently)."""
        if choice == self.normalize:
            return self
        normalization = chosen_normalization(choice, self.train.images, self.train.source)
        return replace(self, normalization=normalization, normalize=choice)


def parse_train_splits(text: str) -> tuple[str, ...]:
    """ "train+test" -> ("train", "test"): the splits a model trains on, train first (the
    validation split is held out from it)."""
    parts = tuple(text.split("+"))
    if parts[0] != "train" or len(set(parts)) != len(parts) or not set(parts) <= set(SPLITS):
        raise UserError(
            f"train_splits {text!r}: train, then any other of {', '.join(SPLITS)} joined by +, "
            "each once (e.g. train+test)"
        )
    return parts


def load_splits(
    source: Source | str | Path | None = None,
    *,
    val_size: int | float | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    train_splits: str = "train",
    normalize: str = "data",
    cache_dir: Path | None | bool = True,
    download: bool = True,
) -> DataSplits:
    """Train (capped per class if asked), a stratified validation split held out from it, the
    test split if the source has one, and the normalisation `normalize` chooses (the
    statistics of the final train images, or ImageNet's).

    `train_splits` "train+test" trains on the test split too (every labeled image, for the
    model you submit): the test split is then part of train and is not reported on."""
    splits = parse_train_splits(train_splits)
    found = resolve_source(source, download=download)
    full = load_split(found, "train", max_per_class=max_per_class, cache_dir=cache_dir)
    train_idx, val_idx, val = hold_out(full, val_size, seed)
    train = (
        full.subset(train_idx, f"{len(val_idx)} held out for validation (seed {seed})")
        if len(val_idx)
        else full
    )
    test = _test_split(found, cache_dir, train)
    if "test" in splits:
        if test is None:
            raise UserError(f"{found.path}: no test split to train on")
        train, test = train.joined(test), None
    provenance = DataProvenance(
        source=str(found.path),
        kind=found.kind,
        val_size=len(val_idx),
        max_per_class=max_per_class,
        seed=seed,
        train_splits=train_splits,  # checked by parse_train_splits above
    )
    normalization = chosen_normalization(normalize, train.images, train.source)
    return DataSplits(train, val, test, normalization, provenance, normalize)


def _test_split(found: Source, cache_dir: Path | None | bool, train: ImageSet) -> ImageSet | None:
    try:
        test = load_split(found, "test", cache_dir=cache_dir)
    except UserError:
        if found.kind != "image-folder" or (found.path / "test").exists():
            raise
        return None  # an image folder with only train/
    if test.classes != train.classes:
        raise UserError(
            f"{found.path}: test classes {test.classes} differ from train classes {train.classes}"
        )
    return test
