"""What the refusal tests (hostile input, in every test folder) share: the checks that a
refusal is one short line, in a call or a command's stderr; Hypothesis settings sized by
BUDGETNET_FUZZ_EXAMPLES, and the values config files and model specs are fuzzed with; small
file helpers (their `release` and `pkl` fixtures are in conftest.py)."""

from __future__ import annotations

import io
import os
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

from budgetnet.errors import UserError

MESSAGE_LIMIT = 300  # characters of any config or spec refusal: never the whole hostile value


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


# --------------------------------------------------------------------------------------------
# Commands: exit 2, one line on stderr, no traceback, nothing written


def one_line_exit_2(result: subprocess.CompletedProcess, match: str) -> str:
    """The command ended with exit code 2 and one line on stderr naming `match`."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and match in lines[0], lines[0]
    return lines[0]


def assert_one_line_refusal(result, match: str) -> None:
    """A command's refusal: exit 2, one line on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and match in lines[0], lines[0]


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


def saved_as(kind: str) -> bytes:
    """An 8x8 image in PIL's format `kind` (a file to disguise under another name)."""
    buffer = io.BytesIO()
    Image.new("F" if kind == "SPIDER" else "RGB", (8, 8)).save(buffer, format=kind)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Fuzzing config files and model specs: any YAML value, a valid result or a one-line refusal

_EDGES = [0, 1, -1, 2, 0.5, 1.0, 1e-9, -0.0, 31, 32, 255, 256, 1024, 1025, 2**32 - 1, 2**32,
          10**6, 2**63, 1e300, float("nan"), float("inf"), float("-inf")]  # fmt: skip
_WORDS = ["", "none", "null", "sgd", "muon", "onecycle", "linear", "reflect", "const", "on",
          "imagenet", "train+test", "train+train", "cuda:0", "cpu", "rand-m9-n2-mstd0.5",
          "augmix-m3-w3", "rand-tweights", "rand-m99", "augmix-a0", "trivialaugment",
          "runs/x", "a\0b", "\n", "1e-3", "10"]  # fmt: skip
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(_EDGES)
    | st.text(max_size=12)
    | st.sampled_from(_WORDS)
)
SETTING_VALUES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=10,
)


def valid_or_refused(build) -> object | None:
    """`build()`'s result, or None where it raised a UserError of one line of at most
    MESSAGE_LIMIT characters."""
    try:
        return build()
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) <= MESSAGE_LIMIT, message
        return None
