"""Open model files from someone else without running their code.

A PyTorch checkpoint and nnU-Net's ``postprocessing.pkl`` are pickles, and unpickling can
call any function the file names (``os.system`` included) the moment it is read. medattn
therefore reads every checkpoint with ``torch.load(..., weights_only=True)``, which builds
tensors and plain containers only, and admits an explicit list of further types:

- nnU-Net 2.8 checkpoints: numpy's ``dtype`` and scalar reconstructor and the numeric dtype
  classes (``numpy.dtypes.Float32DType``, ...), which its training log holds;
- ``postprocessing.pkl``: a restricted unpickler that admits only the postprocessing
  functions of ``nnunetv2.postprocessing.remove_connected_components``, plain containers
  and the same numpy types (``nnUNetv2_find_best_configuration`` stores the labels as
  numpy integers).

Anything else is refused with :class:`UntrustedFileError`, which names the file and the
global it refused. ``trust=True`` (the commands' ``--trust-model``) is the escape hatch:
full pickle loading, for files whose origin you trust; it prints a warning.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["TRUST_HELP", "UntrustedFileError", "load_checkpoint", "load_postprocessing_pickle"]

#: The help text of every ``--trust-model`` flag.
TRUST_HELP = ("load checkpoints and postprocessing.pkl with full pickle support. WARNING: a pickle can run any "
              "code on this machine when it is read; use this only for files whose origin you trust. Without it, "
              "medattn admits tensors, plain containers and the numpy types nnU-Net writes, and refuses anything else")

#: The functions a ``postprocessing.pkl`` written by nnU-Net 2.8 may name.
POSTPROCESSING_GLOBALS = frozenset({
    ("nnunetv2.postprocessing.remove_connected_components", "remove_all_but_largest_component_from_segmentation"),
})

#: numpy dtype classes that nnU-Net's checkpoints hold (their training log's numbers).
_NUMPY_DTYPE_NAMES = ("BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType",
                      "UInt16DType", "UInt32DType", "UInt64DType", "Float16DType", "Float32DType", "Float64DType",
                      "LongLongDType", "ULongLongDType", "LongDType", "ULongDType", "ByteDType", "UByteDType",
                      "ShortDType", "UShortDType", "IntDType", "UIntDType", "LongDoubleDType")


class UntrustedFileError(ValueError):
    """A file would need more than medattn admits from an untrusted source; the message
    names the file, the refused global and ``--trust-model``."""


def _checkpoint_globals() -> list:
    import numpy as np

    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    names = [getattr(np.dtypes, name) for name in _NUMPY_DTYPE_NAMES if hasattr(np.dtypes, name)]
    return [np.dtype, core.multiarray.scalar, *names]


def _warn_trusted(path) -> None:
    print(f"warning: {path}: loading with full pickle support (--trust-model): any code the file names runs now",
          file=sys.stderr)


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False, map_location: Any = "cpu") -> Any:
    """``torch.load`` a checkpoint without running code from it.

    Args:
        path: a ``.pth``/``.pt`` file (nnU-Net's or medattn's).
        trust: load with full pickle support (``--trust-model``), with a warning.
        map_location: as for ``torch.load``.

    Raises:
        UntrustedFileError: if the file needs a global outside the admitted list, naming it.
        ValueError: if the file is not a readable checkpoint, naming it.
    """
    import torch

    if trust:
        _warn_trusted(path)
        return torch.load(path, map_location=map_location, weights_only=False)  # the explicit --trust-model path
    try:
        with torch.serialization.safe_globals(_checkpoint_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UntrustedFileError(f"{path}: refused: {_refused_global(err)}, which medattn does not load from a file "
                                 "of unknown origin; pass --trust-model if you trust where it comes from") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {_first_line(err)})") from err


def _refused_global(err: Exception) -> str:
    text = str(err)
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"got <class '([\w.]+)'>", text)
    if match:
        return f"it names the global {match.group(1)}"
    match = re.search(r"Unsupported operand \d+|Unsupported operand", text)
    return "it uses a pickle instruction outside tensors and plain containers" if match else "it is not plain data"


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else "unknown error"


def _numpy_globals() -> frozenset:
    """(module, name) of numpy's dtype, scalar reconstructor and numeric dtype classes."""
    return frozenset({("numpy", "dtype"), ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar")}
                     | {("numpy.dtypes", name) for name in _NUMPY_DTYPE_NAMES})


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits :data:`POSTPROCESSING_GLOBALS`, numpy's scalar types and nothing else that a
    pickle could call."""

    def find_class(self, module: str, name: str):
        if (module, name) in POSTPROCESSING_GLOBALS or (module, name) in _numpy_globals():
            return super().find_class(module, name)
        raise UntrustedFileError(f"the global {module}.{name}")


def load_postprocessing_pickle(path: str | os.PathLike, *, trust: bool = False) -> Any:
    """Read nnU-Net's ``postprocessing.pkl`` without running code from it.

    Raises:
        UntrustedFileError: for a global other than nnU-Net's postprocessing functions,
            naming the file and the global.
        ValueError: if it is not a readable pickle, naming the file.
    """
    data = Path(path).read_bytes()
    if trust:
        _warn_trusted(path)
        return pickle.loads(data)  # the explicit --trust-model path
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except UntrustedFileError as err:
        raise UntrustedFileError(f"{path}: refused: it names {err}, which medattn does not load from a file of "
                                 "unknown origin (a postprocessing.pkl holds nnU-Net's postprocessing functions "
                                 "only); pass --trust-model if you trust where it comes from") from None
    except Exception as err:  # any malformed pickle: truncated, wrong opcodes, ...
        raise ValueError(f"{path}: not a readable pickle ({type(err).__name__}: {_first_line(err)})") from err
