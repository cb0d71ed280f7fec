"""Hostile input, part III: every cap and budget is applied before the allocation it guards.

One test per class, each with the example that used to spend gigabytes (or end in a traceback)
and at least one other member of its class: a release over the parameter budget, archive
headers that tarfile reads whole into memory, a large CSV, weights of a dtype no release holds,
finite weights whose activations overflow, and CSV ids padded with what str.strip removes.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tarfile
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from budgetnet.data.sources import ImageSet, load_split
from budgetnet.evaluation.ensemble import load_ensemble
from budgetnet.evaluation.report import corruption_report
from budgetnet.models import checkpoint
from budgetnet.models.builder import build
from budgetnet.models.checkpoint import META_FILE, WEIGHTS_FILE, load_release, save_release
from budgetnet.models.complexity import PARAMETER_BUDGET, count_params
from budgetnet.models.spec import ResNetSpec
from budgetnet.submission.csv_file import check_submission, read_submission

from cifar_files import CIFAR10_CLASSES, random_images, write_archive, write_cifar10
from conftest import REPO
from refusals import refused
from tiny import PREPROCESSING, TINY_SPEC

CPU = torch.device("cpu")


def assert_one_line_refusal(result, match: str) -> None:
    """A command's refusal: exit 2, one line on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and match in lines[0], lines[0]


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
# Archive headers tarfile reads whole into memory are refused from the header


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


# --------------------------------------------------------------------------------------------
# A large CSV is read in memory a small multiple of its size

_CSV_PROBE = r"""
import resource, sys
sys.path.insert(0, "code")
from budgetnet.submission.csv_file import read_submission
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ids, labels = read_submission(sys.argv[1])
print(len(ids), int(ids.sum()), int(labels.sum()))
print("grew_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.mark.parametrize(
    "row, rows",
    [
        (b"1,2\n", 6_000_000),  # the shortest rows: the most values per byte (24 MB)
        (b' "123456789" , 7 \r\n', 1_200_000),  # quoted, padded, CRLF (24 MB)
    ],
)
def test_a_large_csv_is_read_in_memory_a_small_multiple_of_its_size(row, rows, tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"ID,Labels\n" + row * rows)
    size_mb = path.stat().st_size / (1 << 20)
    result = subprocess.run(
        [sys.executable, "-c", _CSV_PROBE, str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    counted, grew = result.stdout.strip().splitlines()
    value = 1 if row.startswith(b"1,") else 123456789
    label = 2 if row.startswith(b"1,") else 7
    assert counted.split() == [str(rows), str(value * rows), str(label * rows)]
    # the file itself, 16 bytes of int64 per row and a bounded chunk (was ~25x the file)
    assert float(grew.split()[1]) < 6 * size_mb + 32


def test_a_bad_line_deep_in_a_large_csv_is_named_by_its_number(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"ID,Labels\n" + b"1,2\n" * 1_000_000 + b"3,4\x1c\n")
    refused(lambda: read_submission(path), "line 1000002 is '3,4\\\\x1c'")


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


# --------------------------------------------------------------------------------------------
# Every command that scores a model refuses non-finite probabilities


def _overflowing_release(folder):
    """Finite fp16 weights (60,000 each, under fp16's 65,504) whose activations overflow to
    inf within a few layers, then to NaN."""
    model = build(TINY_SPEC)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(60_000.0)
    return save_release(folder, model, CIFAR10_CLASSES, PREPROCESSING, {}, {}, half=True)


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory):
    folder = _overflowing_release(tmp_path_factory.mktemp("overflow") / "m")
    state = load_file(str(folder / WEIGHTS_FILE))
    assert all(v.isfinite().all() for v in state.values() if v.is_floating_point())
    return folder


def test_evaluate_refuses_nan_probabilities_and_writes_nothing(
    overflowing, cifar, tmp_path, run_main
):
    out = tmp_path / "out"
    result = run_main(
        "code/evaluate.py", "--checkpoint", str(overflowing), "--data", str(cifar),
        "--tta-levels", "0",
        "--report-dir", str(out / "reports"), "--plots-dir", str(out / "plots"),
    )  # fmt: skip
    assert_one_line_refusal(result, "non-finite probabilities for 50 of 50 images")
    assert str(overflowing) in result.stderr
    assert not out.exists()


def test_inference_refuses_the_same_release(overflowing, pkl, tmp_path, run_main):
    out = tmp_path / "s.csv"
    result = run_main("inference.py", "--pkl", str(pkl), "--out", str(out), "--checkpoint",
                      str(overflowing), "--save-probs")  # fmt: skip
    assert_one_line_refusal(result, "non-finite probabilities for 6 of 6 images")
    assert not out.exists() and not out.with_suffix(".probs.npz").exists()


def test_an_ensemble_names_the_member_that_overflows(overflowing, release):
    ensemble = load_ensemble([release, overflowing], CPU)
    images = random_images(4, seed=3)
    message = refused(lambda: ensemble.probs(images, tta=1, batch_size=2, device=CPU), "non-finite")
    assert message.startswith(str(overflowing))
    # the corruption sweep (and the web demo) score through the same call
    labeled = ImageSet(images, np.zeros(len(images), dtype=np.int64), CIFAR10_CLASSES, "test")
    refused(
        lambda: corruption_report(
            ensemble, labeled, ["gaussian_noise"], [1], sample_size=None, seed=0, tta=0,
            batch_size=4, device=CPU,
        ),
        "non-finite",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# CSV ids: only what the format allows, never what str.strip would remove

STRIPPED_BY_PYTHON = {
    "0x1c (file separator)": "12\x1c,3",
    "0x1f (unit separator)": "12,3\x1f",
    "leading 0x1d": "\x1d12,3",
    "a trailing no-break space": "12\u00a0,3",
    "a no-break space after the label": "12,3\u00a0",
    "NEL (U+0085)": "\u008512,3",
    "an em space": "12\u2003,3",
    "a vertical tab": "12\x0b,3",
    "a form feed": "12,3\x0c",
    "a lone carriage return inside": "12\r,3",
    "a NUL": "12\x00,3",
    "an ideographic space": "\u300012,3",
}


@pytest.mark.parametrize("case", list(STRIPPED_BY_PYTHON))
def test_ids_padded_with_what_strip_removes_are_refused_in_one_line(case, tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(f"ID,Labels\n{STRIPPED_BY_PYTHON[case]}\n".encode())
    refused(lambda: check_submission(path, np.array([12]), 10), "line 2 is")


def test_the_check_command_refuses_control_characters_in_one_line(tmp_path, pkl, run_main):
    for row in ("5\x1c,1", "5\u00a0,1"):
        path = tmp_path / "s.csv"
        path.write_bytes(f"ID,Labels\n{row}\n9,0\n1,0\n7,0\n3,0\n8,0\n".encode())
        result = run_main("code/check_submission.py", str(path), "--pkl", str(pkl))
        assert_one_line_refusal(result, "line 2 is")


def test_what_the_format_allows_is_still_read(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(
        b'\xef\xbb\xbf "ID" ,\tLabels\r\n 12 ,\t3 \r\n\r\n"-4","5"\n  \n7,8'  # BOM, no final \n
    )
    ids, labels = read_submission(path)
    assert ids.tolist() == [12, -4, 7] and labels.tolist() == [3, 5, 8]
    assert ids.dtype == labels.dtype == np.int64
    path.write_bytes(b"ID,Labels\n999999999999999999,-999999999999999999\n")
    assert read_submission(path)[0].tolist() == [10**18 - 1]
    for bad in (b"1,2,\n", b"+1,2\n", b"1 2,3\n", b'"1,2"\n', b"1,,2\n", b"1,2\r\r\n", b"0x1,2\n"):
        path.write_bytes(b"ID,Labels\n" + bad)
        refused(lambda: read_submission(path), "line 2 is")
    path.write_bytes(b"ID,Labels\n" + b"1" * 19 + b",2\n")
    refused(lambda: read_submission(path), "line 2 is")


def test_csv_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(b"ID,Labels\n1,2\n\n\n4,x\n")
    refused(lambda: read_submission(path), "line 5 is '4,x'")
