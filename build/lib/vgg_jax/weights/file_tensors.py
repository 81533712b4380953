"""A tensor as a weight file's header describes it, read only when asked: the importer checks
every shape and dtype against the architecture before a byte of tensor data is read."""

from __future__ import annotations

import contextlib
import dataclasses
import reprlib
from typing import Callable

import ml_dtypes
import numpy as np

from vgg_jax.weights.errors import WeightsError

# Weights must be floating point; these are read as float32 (float64 rounds to nearest). Ints,
# bools and complex numbers are refused: a cast would silently change them.
FLOAT_DTYPES = tuple(np.dtype(dtype) for dtype in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64))


def is_float(dtype: np.dtype) -> bool:
    return dtype.newbyteorder("=") in FLOAT_DTYPES  # either byte order


@dataclasses.dataclass(frozen=True)
class FileTensor:
    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[], np.ndarray]  # the tensor's values, in `dtype` and `shape`


def untrusted(value) -> str:
    """A short repr of a value taken from a file (a key, a record): never built at full length
    (reprlib stops at a depth, a length and a count of items)."""
    shorten = reprlib.Repr()
    shorten.maxlevel = 3
    shorten.maxstring = shorten.maxother = 80
    shorten.maxlist = shorten.maxtuple = 20
    text = shorten.repr(value)
    return text if len(text) <= 600 else text[:600] + "..."


@contextlib.contextmanager
def file_errors(path: str, key: str | None = None):
    """Whatever the file's libraries raise (h5py, zipfile, numpy, safetensors, MemoryError) as
    one WeightsError line naming the file (and the key being read)."""
    try:
        yield
    except WeightsError:
        raise
    except Exception as error:  # noqa: BLE001 - each library fails its own way on a damaged file
        where = path if key is None else f"{path}: {key}"
        message = " ".join(str(error).split())[:300]
        raise WeightsError(f"cannot read {where} (damaged or truncated?): {type(error).__name__}: {message}") from error
