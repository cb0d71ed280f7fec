"""One error type for bad input, and the wrapper that turns it into one line and exit code 2."""

from __future__ import annotations

import argparse
import os
import reprlib
import sys
from collections.abc import Callable
from typing import Any

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 40, 40
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = 3


class UserError(Exception):
    """Bad input from the user (a file, a flag, a pickle): the message is shown as is, on one line."""


def shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: Any, limit: int = 40) -> str:
    """A shortened repr of `value` for error messages, built without ever formatting the whole
    value (nested lists a few levels deep and a few items wide, so a YAML alias bomb stays a
    few bytes); "..." where even that fails (an int too long to print)."""
    try:
        text = _REPR.repr(value)
    except Exception:
        text = "..."
    return shorten(text, limit)


def brief(value: Any, limit: int = 40) -> str:
    """The type and a shortened repr of `value`, for error messages: never the whole value."""
    return f"{type(value).__name__} {shown(value, limit)}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line (and exit code 2, as argparse's)."""

    def error(self, message: str) -> None:
        print(f"error: {shorten(' '.join(message.split()), 300)} (see --help)", file=sys.stderr)
        sys.exit(2)


class _OldSpelling(argparse.Action):
    """A flag's earlier name: sets the new flag's value and says, on stderr, what it is called."""

    def __init__(self, option_strings, dest, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"note: {option_string} is now spelled {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_old_spelling(parser: argparse.ArgumentParser, old: str, new: str, **kwargs: Any) -> None:
    """Accept `old` as `new` (same values, `kwargs` as `new` takes them) for scripts that
    still type it, with a one-line note; hidden from --help. Call after adding `new`."""
    parser.add_argument(
        old,
        dest=new.lstrip("-").replace("-", "_"),
        action=_OldSpelling,
        new=new,
        default=argparse.SUPPRESS,  # the new flag's default stands
        help=argparse.SUPPRESS,
        **kwargs,
    )


def reject_unknown(given: Any, known: Any, what: str, where: str = "") -> None:
    """One error for keys that nothing reads, so a typo never silently falls back to a
    default: `what` names them ("setting"), `where` says whose they are (a file's name)."""
    unknown = sorted(str(key) for key in set(given) - set(known))
    if unknown:
        raise UserError(
            f"{where + ': ' if where else ''}unknown {what}(s) "
            f"{shorten(', '.join(unknown), 200)}; known: "
            f"{shorten(', '.join(map(str, known)), 600)}"
        )


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number, got {shorten(text)!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def describe_os_error(exc: OSError) -> str:
    """An OSError as one line: the file(s) it names (shortened, undecodable bytes shown as
    escapes) and the system's reason, e.g. `runs/x/last.pt: File name too long`."""
    names = [
        shorten(os.fsdecode(name).encode("utf-8", "backslashreplace").decode("utf-8"), 160)
        for name in (exc.filename, exc.filename2)
        if name is not None and isinstance(name, str | bytes | os.PathLike)
    ]
    reason = exc.strerror or str(exc) or type(exc).__name__
    return " ".join(f"{' -> '.join(names) + ': ' if names else ''}{reason}".split())


def _tolerate_undecodable_output() -> None:
    """Let the real stdout and stderr print paths holding bytes that are not UTF-8 (file names
    are bytes on POSIX) as escapes, rather than fail on them."""
    for stream in (sys.stdout, sys.stderr):
        if stream in (sys.__stdout__, sys.__stderr__) and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a command-line `main`; a UserError, or an OSError of any kind on a path the user
    gave (a name too long, a symbolic link loop, a file where a folder must be, ...), becomes
    `error: <message>` on stderr and exit 2, never a traceback."""
    _tolerate_undecodable_output()
    try:
        code = main(argv)
    except UserError as exc:
        message = " ".join(str(exc).split())  # always one line
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
