"""Unpickling that can only rebuild plain numeric numpy arrays and plain containers.

A pickle is a program: `pickle.load` calls any importable function the file names, and even
numpy's own reconstructors are dangerous when fed by a hostile file (an object-dtype array
rebuilt from raw bytes holds pointers the file chose; printing it dereferences them). CIFAR
batches and Kaggle test files only need numeric (and bytes/str) arrays, numpy scalars, dicts,
lists, tuples, strings, bytes and numbers, so:

- the unpickler resolves no numpy callable at all. The names numpy pickles use resolve to
  wrappers that record their arguments in inert placeholder objects; nothing numpy-made exists
  until the load has finished;
- a non-recursive walk then checks the whole result (depth, object count, no shared or
  recursive containers) and turns each placeholder into a real array or scalar, after checking
  its dtype (bool, integer, float, complex, bytes or str; no fields, sub-arrays or objects), its
  shape and that its raw bytes have exactly the size the shape says, so no array is ever
  larger than the bytes the file itself holds;
- files are read only if they are regular files below a size cap.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from budgetnet.errors import UserError, brief, shorten
from budgetnet.files import read_regular_file

MAX_FILE_BYTES = 1 << 30  # the largest pickle read from disk (CIFAR-100's train file is 155 MB)
MAX_ARRAY_BYTES = 1 << 30
MAX_DEPTH = 64  # containers nested deeper than this are refused
MAX_OBJECTS = 20_000_000  # objects in the whole result
MAX_NDIM = 32  # numpy's own limit is 64
MAX_STRING_ITEM = 1 << 16  # the longest fixed-width bytes/str element, in characters

_CODE = re.compile(r"([<>|=]?)([biufcSU])(\d*)")
_NUMERIC_SIZES = {
    "b": (1,),
    "i": (1, 2, 4, 8),
    "u": (1, 2, 4, 8),
    "f": (2, 4, 8, 16),
    "c": (8, 16, 32),
}


class _Refused(pickle.UnpicklingError):
    """The file asked for something a data pickle never needs."""


def _text(value: Any, what: str) -> str:
    """A str from str or ASCII bytes (Python 2 pickles, loaded with encoding="bytes")."""
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            pass
    if not isinstance(value, str):
        raise _Refused(f"{what} is {brief(value)}, expected a short string")
    return value


# --------------------------------------------------------------------------------------------
# Placeholders: what the wrapped numpy names return while the pickle runs


class _Dtype:
    """numpy.dtype(code, align, copy), then BUILD with its state (endianness, size, fields)."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True) -> None:
        self.code = _text(code, "a dtype code")
        if not _CODE.fullmatch(self.code):
            raise _Refused(f"dtype {brief(self.code)} is not a plain number, bytes or str type")
        self.state: tuple | None = None

    def __setstate__(self, state: Any) -> None:
        if self.state is not None or not isinstance(state, tuple) or len(state) not in (8, 9):
            raise _Refused(f"unexpected dtype state {brief(state)}")
        self.state = state

    def resolve(self) -> np.dtype:
        order, kind, size = _CODE.fullmatch(self.code).groups()
        elsize = -1
        if self.state is not None:
            version, endian, subarray, names, fields, elsize, _align, _flags = self.state[:8]
            metadata = self.state[8] if len(self.state) == 9 else None
            if version not in (3, 4) or subarray is not None or names is not None:
                raise _Refused("structured dtypes and sub-arrays are not loaded")
            if fields is not None or metadata not in (None, {}):
                raise _Refused("structured dtypes and dtype metadata are not loaded")
            order = _text(endian, "a byte order")
            if order not in ("<", ">", "|", "="):
                raise _Refused(f"byte order {brief(order)}")
            if not isinstance(elsize, int) or isinstance(elsize, bool):
                raise _Refused(f"dtype size {brief(elsize)}")
        if kind in "SU":
            width = int(size) if size else (elsize // (4 if kind == "U" else 1))
            if not 1 <= width <= MAX_STRING_ITEM:
                raise _Refused(f"string dtype of {width} characters")
            dtype = np.dtype(f"{kind}{width}")
        else:
            if not size or int(size) not in _NUMERIC_SIZES[kind]:
                raise _Refused(f"dtype {brief(self.code)} has no plain numeric size")
            dtype = np.dtype(f"{kind}{size}")
        if elsize > 0 and elsize != dtype.itemsize:
            raise _Refused(f"dtype {dtype} with a stated size of {elsize} bytes")
        return dtype.newbyteorder(order) if order in "<>" else dtype


class _Array:
    """numpy.ndarray rebuilt from (shape, dtype, order, raw bytes), checked when resolved."""

    def __init__(self) -> None:
        self.parts: tuple | None = None

    def __setstate__(self, state: Any) -> None:
        if self.parts is not None or not isinstance(state, tuple) or len(state) != 5:
            raise _Refused(f"unexpected array state {brief(state)}")
        _version, shape, dtype, fortran, raw = state
        self.parts = (shape, dtype, "F" if fortran else "C", raw)

    def resolve(self, dtype: np.dtype) -> np.ndarray:
        if self.parts is None:
            raise _Refused("an array without its data")
        shape, _, order, raw = self.parts  # order is "C" or "F": both setters ensure it
        if isinstance(raw, str):  # Python 3 pickles under protocols 0-2 before _codecs.encode
            raise _Refused("array data given as text")
        if not isinstance(raw, bytes | bytearray):
            raise _Refused(f"array data is {brief(raw)}, expected bytes")
        shape = _shape(shape)
        size = math.prod(shape) * dtype.itemsize
        if size > MAX_ARRAY_BYTES:
            raise _Refused(f"an array of {size:,} bytes (more than {MAX_ARRAY_BYTES:,})")
        if len(raw) != size:
            raise _Refused(f"array data of {len(raw):,} bytes for {shape} {dtype} ({size:,})")
        # A private, writable copy, as pickle.load would give.
        return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order).copy(order="K")


class _FromBuffer(_Array):
    """numpy's protocol-5 reconstructor: _frombuffer(buffer, dtype, shape, order)."""

    def __init__(self, raw: Any, dtype: Any, shape: Any, order: Any) -> None:
        super().__init__()
        order = _text(order, "an array order")
        if order not in ("C", "F"):
            raise _Refused(f"array order {brief(order)}")
        self.parts = (shape, dtype, order, raw)

    def __setstate__(self, state: Any) -> None:
        raise _Refused("a complete array given a second state")


class _Scalar:
    """numpy.core.multiarray.scalar(dtype, raw bytes)."""

    def __init__(self, dtype: Any, raw: Any = None) -> None:
        self.dtype, self.raw = dtype, raw

    def resolve(self, dtype: np.dtype) -> np.generic:
        if not isinstance(self.raw, bytes | bytearray) or len(self.raw) != dtype.itemsize:
            raise _Refused(f"a {dtype} scalar from {brief(self.raw)}")
        return np.frombuffer(self.raw, dtype=dtype, count=1)[0].copy()


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > MAX_NDIM:
        raise _Refused(f"array shape {brief(value)}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
        raise _Refused(f"array shape {brief(value)}")
    return value


class _NdarrayName:
    """What `numpy.ndarray` resolves to: only good as _reconstruct's first argument."""

    __slots__ = ()  # BUILD cannot give it attributes

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise _Refused("numpy.ndarray called directly")


_NDARRAY = _NdarrayName()


def _reconstruct(cls: Any, shape: Any = (0,), code: Any = b"b") -> _Array:
    if cls is not _NDARRAY:
        raise _Refused(f"_reconstruct of {brief(cls)}")
    return _Array()


def _empty_bytes(*args: Any) -> bytes:
    """bytes(): how Python writes an empty bytes object under protocols 0-2."""
    if args:
        raise _Refused(f"bytes({brief(args)})")
    return b""


def _encode(value: Any, encoding: Any = "latin1") -> bytes:
    """_codecs.encode as numpy and Python 3 write bytes under protocols 0-2: latin-1 only."""
    if not isinstance(value, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode({brief(value)}, {brief(encoding)})")
    return value.encode("latin1")


# (module, name) as written in the pickle -> what it resolves to.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}
for _prefix in ("numpy.core", "numpy._core"):  # numpy 2 renamed numpy.core to numpy._core
    _ALLOWED[(f"{_prefix}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_prefix}.multiarray", "scalar")] = _Scalar
    _ALLOWED[(f"{_prefix}.numeric", "_frombuffer")] = _FromBuffer


# The pure-Python unpickler: the C one keeps its memo in an array that a tiny file can make it
# allocate gigabytes for (LONG_BINPUT with a large index); this one keeps a dict. Data pickles
# hold few, large objects, so its speed is not a concern.
class _DataUnpickler(pickle._Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(
                f"it refers to {shorten(f'{module}.{name}')}, and only numpy arrays and plain "
                "containers may be loaded"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it refers to a persistent object")


# --------------------------------------------------------------------------------------------
# The walk: check every object, turn placeholders into arrays

_ATOMS = (type(None), bool, int, float, complex, str, bytes, bytearray)
_CONTAINERS = (dict, list, tuple, set, frozenset)


def _finish(root: Any) -> Any:
    """`root` with every placeholder replaced, after checking the whole object graph without
    recursion: at most MAX_DEPTH levels, MAX_OBJECTS objects, and every container reached once
    (a data pickle has no shared or recursive containers; refusing them bounds the work)."""
    dtypes: dict[int, np.dtype] = {}
    done: dict[int, Any] = {}  # placeholder id -> its value (placeholders may be shared)
    seen: set[int] = set()
    count = 0

    def dtype_of(value: Any) -> np.dtype:
        if not isinstance(value, _Dtype):
            raise _Refused(f"an array or scalar whose dtype is {brief(value)}")
        if id(value) not in dtypes:
            dtypes[id(value)] = value.resolve()
        return dtypes[id(value)]

    def leaf(value: Any) -> Any:
        if isinstance(value, _ATOMS):
            return value
        if id(value) not in done:
            if isinstance(value, _Array):
                done[id(value)] = value.resolve(dtype_of(value.parts[1] if value.parts else None))
            elif isinstance(value, _Scalar):
                done[id(value)] = value.resolve(dtype_of(value.dtype))
            elif isinstance(value, _Dtype):
                done[id(value)] = dtype_of(value)
            else:
                raise _Refused(f"it holds {brief(value)}")
        return done[id(value)]

    # Containers are rebuilt bottom-up: (container, depth, rebuilt children so far).
    result: list[Any] = []
    stack: list[tuple[Any, int, list | None]] = [(root, 0, None)]
    while stack:
        value, depth, children = stack.pop()
        if children is None:
            count += 1
            if count > MAX_OBJECTS:
                raise _Refused(f"more than {MAX_OBJECTS:,} objects")
            if not isinstance(value, _CONTAINERS):
                result.append(leaf(value))
                continue
            if depth >= MAX_DEPTH:
                raise _Refused(f"containers nested more than {MAX_DEPTH} deep")
            if id(value) in seen:
                raise _Refused("a container that appears twice (shared or recursive)")
            seen.add(id(value))
            items = [x for kv in value.items() for x in kv] if isinstance(value, dict) else value
            stack.append((value, depth, []))
            stack.extend((item, depth + 1, None) for item in reversed(list(items)))
            continue
        size = len(value) * (2 if isinstance(value, dict) else 1)
        parts = result[len(result) - size :] if size else []
        del result[len(result) - size :]
        result.append(_rebuild(value, parts))
    return result[0]


def _rebuild(container: Any, parts: list) -> Any:
    if isinstance(container, dict):
        keys = parts[0::2]
        for key in keys:
            if not isinstance(key, _ATOMS) or isinstance(key, bytearray):
                raise _Refused(f"a dict key that is {brief(key)}")
        return dict(zip(keys, parts[1::2], strict=True))
    if isinstance(container, set | frozenset) and any(
        not isinstance(p, _ATOMS) or isinstance(p, bytearray) for p in parts
    ):
        raise _Refused("a set of unhashable values")
    return type(container)(parts)


# --------------------------------------------------------------------------------------------
# Entry points


def safe_loads(data: bytes, *, what: str = "pickle") -> Any:
    """Unpickle `data`, allowing only plain numeric arrays and plain containers.

    Byte strings from Python 2 pickles (the CIFAR batches) stay bytes (encoding="bytes"), as
    `pickle.load(f, encoding="bytes")` would give them."""
    try:
        loaded = _DataUnpickler(io.BytesIO(data), encoding="bytes").load()
        return _finish(loaded)
    except _Refused as exc:
        raise UserError(f"{what} is not safe to load: {exc}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        OverflowError,
        RecursionError,
        UnicodeDecodeError,
        struct.error,
    ) as exc:
        raise UserError(
            f"{what} is not a valid pickle (truncated or corrupt?): {brief(str(exc), 120)}"
        ) from None


def safe_load(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """Read and safely unpickle the file at `path` (see `safe_loads`)."""
    return safe_loads(read_regular_file(path, max_bytes, "pickle file"), what=str(path))


def pickle_field(payload: Any, key: str, where: str) -> Any:
    """payload[key] under the byte-string key Python 2 pickles use (CIFAR's batches, the Kaggle
    pickle) or the str key of a re-pickle; a one-line error naming the keys found otherwise."""
    if isinstance(payload, dict):
        for k in (key.encode(), key):
            if k in payload:
                return payload[k]
        found = ", ".join(brief(k, 30) for k in list(payload)[:6]) or "none"
        raise UserError(f"{where}: missing key b'{key}' (keys found: {found})")
    raise UserError(f"{where}: expected a dict with key b'{key}', got {brief(payload)}")
