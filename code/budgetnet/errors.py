"""One error type for bad input, and the wrapper that turns it into one line and exit code 2."""

from __future__ import annotations

import argparse
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


def brief(value: Any, limit: int = 40) -> str:
    """The type and a shortened repr of `value`, for error messages: never the whole value."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a repr that fails (an int too long to print) still names the type
        text = "..."
    return f"{type(value).__name__} {shorten(text, limit)}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line (and exit code 2, as argparse's)."""

    def error(self, message: str) -> None:
        print(f"error: {shorten(' '.join(message.split()), 300)} (see --help)", file=sys.stderr)
        sys.exit(2)


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


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a command-line `main`; a UserError becomes `error: <message>` on stderr and exit 2."""
    try:
        code = main(argv)
    except UserError as exc:
        message = " ".join(str(exc).split())  # always one line
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
