"""What the hostile-input tests share (tests/test_hostile*.py): the check that a refusal is one
short line, and Hypothesis settings sized by BUDGETNET_FUZZ_EXAMPLES (their `release` and
`pkl` fixtures are in conftest.py)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from budgetnet.errors import UserError


def fuzz_settings(default_examples: int = 300):
    """`BUDGETNET_FUZZ_EXAMPLES=20000` runs a longer campaign than the suite's default."""
    return settings(
        max_examples=int(os.environ.get("BUDGETNET_FUZZ_EXAMPLES", default_examples)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def refused(call, match: str) -> str:
    """`call()` raises a UserError matching `match`, one line that never shows the whole value."""
    with pytest.raises(UserError, match=match) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and len(message) < 600, message
    return message


def mutated(items, edits):
    """`items` (a list or bytearray) after each (position, kind, value) edit: r replaces,
    i inserts, d deletes."""
    for position, kind, value in edits:
        at = position % (len(items) + 1)
        if kind == "r" and at < len(items):
            items[at] = value
        elif kind == "i":
            items.insert(at, value)
        elif at < len(items):
            del items[at]
    return items
