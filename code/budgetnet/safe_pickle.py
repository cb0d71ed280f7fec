"""Unpickling that can only rebuild numpy arrays and plain containers.

A pickle is a program: `pickle.load` will call any importable function the file names
(`os.system`, `builtins.open`, ...). CIFAR batches and Kaggle test files only ever need numpy
arrays, numpy scalars and dtypes, dicts, lists, tuples, strings, bytes and numbers, so the
unpickler below resolves exactly those globals and refuses everything else before it runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from budgetnet.errors import UserError


def _numpy_attr(name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; pickles name whichever wrote them.
    core = getattr(np, "_core", None) or np.core
    module, _, attr = name.rpartition(".")
    return getattr(getattr(core, module), attr)


# (module, name) as written in the pickle -> the object it may resolve to.
_ALLOWED: dict[tuple[str, str], Any] = {}
for _prefix in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_prefix}.multiarray", "_reconstruct")] = _numpy_attr("multiarray._reconstruct")
    _ALLOWED[(f"{_prefix}.multiarray", "scalar")] = _numpy_attr("multiarray.scalar")
    _ALLOWED[(f"{_prefix}.numeric", "_frombuffer")] = _numpy_attr("numeric._frombuffer")
_ALLOWED[("numpy", "ndarray")] = np.ndarray
_ALLOWED[("numpy", "dtype")] = np.dtype
# Python 3 writes bytes as _codecs.encode(str, "latin1") under protocols 0-2.
_ALLOWED[("_codecs", "encode")] = __import__("codecs").encode
# Numpy 2 pickles dtypes through numpy.dtypes.<Kind>DType classes.
for _name in dir(getattr(np, "dtypes", object())):
    if _name.endswith("DType"):
        _ALLOWED[("numpy.dtypes", _name)] = getattr(np.dtypes, _name)


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(
                f"it refers to {module}.{name}, and only numpy arrays and plain containers "
                "may be loaded"
            ) from None


def safe_loads(data: bytes, *, what: str = "pickle") -> Any:
    """Unpickle `data`, allowing only numpy arrays and plain containers.

    Byte strings from Python 2 pickles (the CIFAR batches) stay bytes (encoding="bytes"),
    as `pickle.load(f, encoding="bytes")` would give them.
    """
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _ForbiddenGlobal as exc:
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
        UnicodeDecodeError,
    ) as exc:
        raise UserError(f"{what} is not a valid pickle (truncated or corrupt?): {exc}") from None


def safe_load(path: str | Path) -> Any:
    """Read and safely unpickle the file at `path` (see `safe_loads`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a pickle file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    return safe_loads(data, what=str(path))
