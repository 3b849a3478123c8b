"""Reading pickle files without running code: only numpy arrays, numpy scalars/dtypes and plain containers.

``pickle.load`` calls whatever function a file names (``os.system`` included), so a ``.pkl`` weights file or a
dataset index from the internet could run any command. :func:`safe_pickle_load` resolves only the globals in
:data:`ALLOWED_GLOBALS` (what numpy arrays and Detectron/Caffe2/torchvision-converted weight files need) and
refuses every other one before it is called.
"""
from __future__ import annotations

import io
import pickle
from typing import IO, Any, FrozenSet, Tuple

__all__ = ["ALLOWED_GLOBALS", "UnsafePickleError", "safe_pickle_load", "safe_pickle_loads"]

# (module, name) pairs a numpy-array pickle needs (numpy 1 writes "numpy.core", numpy 2 "numpy._core"; Python 2
# pickles name the builtins "__builtin__"), and the plain containers beyond dict, list, tuple, str, bytes, numbers.
ALLOWED_GLOBALS: FrozenSet[Tuple[str, str]] = frozenset(
    [(f"{core}.multiarray", "_reconstruct") for core in ("numpy.core", "numpy._core")]
    + [(f"{core}.multiarray", "scalar") for core in ("numpy.core", "numpy._core")]
    + [(f"{core}.numeric", "_frombuffer") for core in ("numpy.core", "numpy._core")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "OrderedDict")]
    + [(b, name) for b in ("builtins", "__builtin__") for name in ("set", "frozenset", "complex", "bytes", "bytearray")]
)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a function or class outside :data:`ALLOWED_GLOBALS` (it could run code); nothing was called."""

    def __init__(self, module: str, name: str):
        super().__init__(f"it refers to {module}.{name}, which could run code; only numpy arrays and plain "
                         "containers (dict, list, tuple, str, numbers) are read from pickle files")
        self.module, self.name = module, name


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(module, name)
        return super().find_class(module, name)


def safe_pickle_load(f: IO[bytes], *, encoding: str = "ASCII") -> Any:
    """``pickle.load(f)`` restricted to numpy arrays and plain containers.

    Args:
        f: a binary file object.
        encoding: how Python 2 ``str`` objects are decoded ("latin1" for Python 2 numpy pickles, e.g. Detectron
            and Caffe2 model-zoo files).
    Raises:
        UnsafePickleError: the pickle names anything else (nothing it names has been called).
        pickle.UnpicklingError, EOFError, ...: the data is not a complete pickle.
    """
    return _RestrictedUnpickler(f, encoding=encoding).load()


def safe_pickle_loads(data: bytes, *, encoding: str = "ASCII") -> Any:
    """:func:`safe_pickle_load` of a bytes object."""
    return safe_pickle_load(io.BytesIO(data), encoding=encoding)
