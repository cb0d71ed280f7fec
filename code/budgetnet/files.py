"""Files: written so that a reader never sees half of one (temporary name, then rename), and
read only when they are regular files below a size cap (a named pipe, /dev/zero or a huge file
handed to us is refused before anything is read)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from budgetnet.errors import UserError, shorten

STALE_SECONDS = 3600  # a temporary file this old was left by a killed process
MAX_YAML_BYTES = 1 << 20  # config files and run records


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale(path: Path) -> None:
    """Temporary files of `path` left behind by a killed writer (older than STALE_SECONDS)."""
    now = time.time()
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - stale.stat().st_mtime > STALE_SECONDS:
                stale.unlink()


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", *, check: Callable[[Path], None] | None = None, **open_kwargs
) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success rename it over `path`, else delete it.

    The rename is atomic on POSIX and Windows, so `path` holds either its old content or the
    whole new one, never a partial file, even if the process dies mid-write. `check`, if
    given, is called with the finished temporary file before the rename: if it raises, `path`
    keeps its old content. The file gets the usual permissions (0666 less the umask), not the
    private ones of a temporary file. A full disk or an unwritable folder is a UserError.
    """
    path = Path(path)
    check_output_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None
        raise


def _check_stat(path: Path, info: os.stat_result, max_bytes: int, what: str) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{path}: is a directory, expected a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: not a regular file (a pipe or device?), expected a {what}")
    if info.st_size > max_bytes:
        raise UserError(
            f"{path}: {info.st_size:,} bytes, more than the {max_bytes:,} a {what} may have"
        )


def check_regular_file(path: str | Path, max_bytes: int, what: str = "file") -> None:
    """Refuse `path` unless it is a regular file of at most `max_bytes` (for files another
    library opens itself by name; prefer `open_regular_file`, which checks the file it opens)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    _check_stat(path, info, max_bytes, what)


def _open_checked(path: Path, max_bytes: int, what: str) -> int:
    """A read-only descriptor of `path`, opened without blocking (a named pipe with no writer
    does not hang the open) and checked, on the descriptor itself, to be a regular file of at
    most `max_bytes`."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a {what}") from None
    except OSError as exc:  # a name too long, a symbolic link loop, no permission, ...
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        _check_stat(path, os.fstat(fd), max_bytes, what)  # before fdopen, which refuses folders
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: reads are ordinary from here on
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def open_regular_file(path: str | Path, max_bytes: int, what: str = "file") -> Iterator[IO[bytes]]:
    """`path` opened for binary reading if it is a regular file of at most `max_bytes`, for
    readers that take a file object (torch.load, np.load, PIL): the file checked is the file
    read, so it cannot be swapped for a pipe between the check and the read."""
    with os.fdopen(_open_checked(Path(path), max_bytes, what), "rb") as handle:
        yield handle


def read_regular_file(path: str | Path, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of `path` if it is a regular file of at most `max_bytes` (a named pipe, a
    device such as /dev/zero or an oversized file is refused before anything is read)."""
    path = Path(path)
    with os.fdopen(_open_checked(path, max_bytes, what), "rb") as handle:
        # The file's size (already checked) plus one byte, to see growth: not the cap, which
        # would reserve the cap's memory for every small file.
        limit = min(max_bytes, os.fstat(handle.fileno()).st_size) + 1
        try:
            data = handle.read(limit)
        except OSError as exc:
            raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) == limit:  # it grew while being read
        raise UserError(f"{path}: changed size while being read, expected a {what}")
    return data


def check_output_file(path: str | Path, flag: str = "") -> None:
    """Refuse, before any work is done, a file name to write that cannot be one: a directory,
    a name longer than the file system allows, a path through a file or a symbolic link loop."""
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return  # a new file (a missing folder above it is created)
    except OSError as exc:
        raise UserError(f"{where}: cannot write ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{where}: is a directory; give a file name to write")


def check_output_dir(path: str | Path, flag: str = "") -> None:
    """Refuse, before any work is done, a folder to write into that cannot be one: an
    existing file, a name longer than the file system allows, a path through a file or a
    symbolic link loop. A folder that does not exist yet is fine (it is created)."""
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserError(f"{where}: cannot write a folder there ({exc.strerror or exc})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UserError(f"{where}: exists and is not a directory; give a folder to write into")


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """A YAML file's content (yaml.safe_load: plain values only), size-capped."""
    import yaml

    path = Path(path)
    raw = read_regular_file(path, MAX_YAML_BYTES, what)
    try:
        return yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise UserError(f"{path}: not valid YAML ({shorten(' '.join(str(exc).split()))})") from None


def distinct_paths(paths: dict[str, str | Path | None]) -> None:
    """Refuse two flags that name the same file (--out over --pkl would destroy the input)."""
    seen: dict[str, str] = {}
    for flag, path in paths.items():
        if path is None:
            continue
        # realpath, not Path.resolve: it does not raise on a symbolic link loop
        resolved = os.path.realpath(path)
        if resolved in seen:
            raise UserError(f"{seen[resolved]} and {flag} name the same file ({path})")
        seen[resolved] = flag
