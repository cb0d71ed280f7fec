"""User errors (budgetnet.errors): a value in a message is never shown whole, and run_cli turns
any OSError into one line and exit 2."""

from __future__ import annotations

import pytest

from budgetnet.errors import brief


def test_brief_never_shows_a_whole_value():
    assert brief("x" * 10_000).startswith("str 'x") and len(brief("x" * 10_000)) <= 44
    assert brief(10**5000).startswith("int ")  # too long even to print: still one line
    assert len(brief(list(range(10**5)))) < 60


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
