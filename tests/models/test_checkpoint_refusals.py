"""Releases and resume states (budgetnet.models.checkpoint) that are refused before they cost
memory or give a wrong model: a spec over the parameter budget or with huge layers, weights
of a dtype no release holds, NaN weights, a degenerate normalisation, a broken resume state."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from budgetnet.evaluation.ensemble import load_ensemble
from budgetnet.models import checkpoint
from budgetnet.models.builder import build
from budgetnet.models.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    load_release,
    load_state,
    save_release,
)
from budgetnet.models.complexity import PARAMETER_BUDGET, count_params
from budgetnet.models.spec import ResNetSpec

from cifar_files import CIFAR10_CLASSES
from conftest import REPO
from refusals import assert_one_line_refusal, refused
from tiny import PREPROCESSING, TINY_SPEC, edited_release

CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Broken releases never give a model


def test_release_spec_asking_for_huge_layers_is_refused_before_allocating(tmp_path, release):
    folder = edited_release(
        release, tmp_path / "huge", lambda meta: meta["spec"].update(channels=[10**9, 10**9])
    )
    refused(lambda: load_release(folder), "exceeds the limit")


def test_nan_weights_are_refused(tmp_path):
    model = build(TINY_SPEC)
    with torch.no_grad():
        model.head.fc.weight[0, 0] = float("nan")
    folder = save_release(tmp_path / "nan", model, CIFAR10_CLASSES, PREPROCESSING, {}, {})
    refused(lambda: load_release(folder), "non-finite weights")


def test_degenerate_normalisation_is_refused(tmp_path, release):
    folder = edited_release(
        release, tmp_path / "std0", lambda meta: meta["normalization"].update(std=[0.0] * 3)
    )
    refused(lambda: load_release(folder), "normalisation std")


def test_load_state_still_reads_a_state_and_names_a_missing_one(tmp_path):
    import torch

    from budgetnet.models.checkpoint import save_state

    save_state(tmp_path / "last.pt", {"x": torch.ones(2), "epoch": 3})
    assert load_state(tmp_path / "last.pt")["epoch"] == 3
    refused(lambda: load_state(tmp_path / "none.pt"), "no resume state")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not a zip")
    refused(lambda: load_state(tmp_path / "junk.pt"), "unreadable resume state")


# --------------------------------------------------------------------------------------------
# A release over the budget is refused from its spec, before anything is built or read

# 450,215,010 parameters (900 MB in fp16, under the weights file's 1 GiB cap).
HUGE_SPEC = ResNetSpec((1,), (5000,))


def _sparse_weights(path, spec: ResNetSpec) -> None:
    """A safetensors file whose header lists exactly the tensors `spec` plans, fp16 (int64 for
    the BatchNorm counters), with its data a hole: it costs no disk and matches its header."""
    with torch.device("meta"):
        planned = build(spec).state_dict()
    header, offset = {}, 0
    for name, tensor in planned.items():
        dtype, size = ("F16", 2) if tensor.is_floating_point() else ("I64", 8)
        end = offset + tensor.numel() * size
        header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, end]}
        offset = end
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)) + blob)
        handle.truncate(8 + len(blob) + offset)


def _huge_release(folder, release):
    folder.mkdir()
    meta = json.loads((release / META_FILE).read_text())
    meta["spec"] = HUGE_SPEC.to_dict()
    (folder / META_FILE).write_text(json.dumps(meta))
    _sparse_weights(folder / WEIGHTS_FILE, HUGE_SPEC)
    return folder


def test_the_huge_release_is_a_faithful_one(tmp_path, release):
    """The example is what the issue says: ~450M parameters, a weights file under the size cap
    whose header matches the spec (so only the budget stands in the way)."""
    folder = _huge_release(tmp_path / "huge", release)
    assert 449e6 < count_params(HUGE_SPEC) < 451e6
    weights = folder / WEIGHTS_FILE
    assert weights.stat().st_size < checkpoint.MAX_WEIGHTS_BYTES
    with torch.device("meta"):
        planned = build(HUGE_SPEC).state_dict()
    with safe_open(str(weights), framework="pt") as handle:
        assert {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()} == {  # noqa: SIM118
            k: tuple(v.shape) for k, v in planned.items()
        }


_RELEASE_PROBE = r"""
import resource, sys
sys.path.insert(0, "code")
import torch
from budgetnet.errors import UserError
from budgetnet.evaluation.ensemble import load_ensemble
from budgetnet.models.checkpoint import load_release
huge, small = sys.argv[1:3]
calls = {
    "load_release": lambda: load_release(huge, max_params=5_000_000),
    "ensemble": lambda: load_ensemble([huge], torch.device("cpu"), 5_000_000),
    "second member": lambda: load_ensemble([small, huge], torch.device("cpu"), 5_000_000),
}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name, call in calls.items():
    try:
        call()
        print(name, "loaded")
    except UserError as exc:
        print(name, "refused", str(exc).replace("\n", " ")[:300])
print("grew_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_a_release_over_the_budget_is_refused_from_its_spec_in_small_memory(tmp_path, release):
    huge = _huge_release(tmp_path / "huge", release)
    result = subprocess.run(
        [sys.executable, "-c", _RELEASE_PROBE, str(huge), str(release)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(" refused ")[0] for line in lines[:3]] == [
        "load_release", "ensemble", "second member",
    ], lines  # fmt: skip
    assert "450,215,010 parameters, over the budget of 5,000,000" in lines[0]
    assert "the model holds 450,215,010 parameters" in lines[1]
    assert f"2 models hold {450_215_010 + count_params(TINY_SPEC):,} parameters" in lines[2]
    assert float(lines[-1].split()[1]) < 300  # MB of peak memory beyond the imports (was 5 GB)


def test_the_budget_is_checked_before_any_network_is_built(tmp_path, release, monkeypatch):
    built = []
    real_build = checkpoint.build
    monkeypatch.setattr(checkpoint, "build", lambda spec: built.append(spec) or real_build(spec))
    huge = _huge_release(tmp_path / "huge", release)
    refused(lambda: load_release(huge, max_params=PARAMETER_BUDGET), "over the budget")
    # Another member of the class: members that fit alone but not together, refused before
    # the first is built (the budget used to be checked on the loaded ensemble).
    size = count_params(TINY_SPEC)
    refused(
        lambda: load_ensemble([release, release], CPU, max_params=2 * size - 1),
        f"2 models hold {2 * size:,} parameters",
    )
    assert built == []
    assert load_ensemble([release, release], CPU, max_params=2 * size).parameters == 2 * size


@pytest.mark.parametrize("script", ["inference.py", "code/evaluate.py"])
def test_commands_refuse_a_release_over_the_budget_in_one_line(
    script, tmp_path, release, pkl, run_main
):
    huge = _huge_release(tmp_path / "huge", release)
    out = tmp_path / "out"
    if script == "inference.py":
        args = ["--pkl", str(pkl), "--out", str(out / "s.csv")]
    else:
        args = ["--report-dir", str(out / "reports"), "--plots-dir", str(out / "plots")]
    result = run_main(script, *args, "--checkpoint", str(huge))
    assert_one_line_refusal(result, "450,215,010 parameters, over the budget of 5,000,000")
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Weights only of the dtypes a release holds, checked from the header before loading


def _with_weights(release, folder, convert):
    """A copy of `release` whose weights went through `convert(state)`."""
    folder.mkdir()
    (folder / META_FILE).write_bytes((release / META_FILE).read_bytes())
    state = load_file(str(release / WEIGHTS_FILE))
    save_file(convert(state), str(folder / WEIGHTS_FILE))
    return folder


def _first(dtype, floating=True):
    def convert(state):
        key = next(k for k, v in state.items() if v.is_floating_point() == floating)
        return {**state, key: state[key].to(dtype)}

    return convert


DTYPE_CASES = {
    "float8 e4m3": (_first(torch.float8_e4m3fn), "stored as F8_E4M3, expected float32, float16"),
    "float8 e5m2": (_first(torch.float8_e5m2), "stored as F8_E5M2"),
    "complex64": (_first(torch.complex64), "stored as C64"),
    "float64": (_first(torch.float64), "stored as F64"),
    "a counter as float32": (
        _first(torch.float32, floating=False),
        "stored as F32, expected int64",
    ),
    "a counter as int32": (_first(torch.int32, floating=False), "stored as I32, expected int64"),
}


@pytest.mark.parametrize("case", list(DTYPE_CASES))
def test_weights_of_other_dtypes_are_refused_from_the_header(case, tmp_path, release, monkeypatch):
    convert, match = DTYPE_CASES[case]
    folder = _with_weights(release, tmp_path / "w", convert)
    devices = []  # of every network built: only the plan, on the meta device, before the check
    real_build = checkpoint.build

    def recording_build(spec):
        model = real_build(spec)
        devices.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(checkpoint, "build", recording_build)
    refused(lambda: load_release(folder), match)
    assert devices == ["meta"]


def test_float8_and_complex_weights_end_inference_in_one_line(tmp_path, release, pkl, run_main):
    for name in ("float8 e4m3", "complex64"):
        folder = _with_weights(release, tmp_path / name.replace(" ", "_"), DTYPE_CASES[name][0])
        out = tmp_path / "out" / "s.csv"
        result = run_main("inference.py", "--pkl", str(pkl), "--out", str(out), "--checkpoint",
                          str(folder))  # fmt: skip
        assert_one_line_refusal(result, "expected float32, float16 or bfloat16")
        assert not out.parent.exists()


def test_bfloat16_fp16_and_fp32_weights_still_load(tmp_path, release):
    expected = load_release(release).model.state_dict()
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        folder = _with_weights(
            release,
            tmp_path / str(dtype).removeprefix("torch."),
            lambda state, d=dtype: {
                k: v.to(d) if v.is_floating_point() else v for k, v in state.items()
            },
        )
        loaded = load_release(folder).model.state_dict()
        for key, value in expected.items():
            assert loaded[key].dtype == value.dtype
            torch.testing.assert_close(loaded[key], value.to(dtype).to(value.dtype))
