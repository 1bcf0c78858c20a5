"""What every model type provides to the batch runner, and the input checks they share.

A backend splits one case into three steps so that the runner can overlap them across
cases (reading the next case and writing the previous one while the device predicts):

- ``prepare(case)``: read and check the input files, preprocess (worker thread);
- ``infer(prepared)``: the network on the device (main thread);
- ``export(case, prepared, result, output_dir, save_probabilities)``: back to the input
  grid, argmax, atomic writes (worker thread).

Every error a step raises for bad input is a :class:`CaseError` whose message names the
file and the problem; the runner records it and goes on with the next case.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medattn.inference.naming import Case

__all__ = ["Backend", "CaseError", "check_input_file", "check_finite", "write_probabilities"]


class CaseError(ValueError):
    """One case cannot be predicted; the message names the file and the problem."""


class Backend(Protocol):
    """The interface of :mod:`medattn.inference.nnunet_backend` and ``monai_backend``."""

    #: Input channels (files per case) the model expects.
    num_channels: int
    #: One line naming the model, the folds or checkpoint, the device and TTA.
    description: str

    def prepare(self, case: Case) -> Any: ...

    def infer(self, prepared: Any) -> Any: ...

    def export(self, case: Case, prepared: Any, result: Any, output_dir: Path, save_probabilities: bool) -> None: ...


def check_input_file(path: str | os.PathLike, spatial_dims: int | None = None) -> None:
    """Check one input channel before it is read: readable, one component, 2D or 3D, and
    for NIfTI complete (not truncated) with finite values.

    SimpleITK reads a truncated NIfTI as if the missing voxels were zeros and NaN voxels
    as 0, which would give a plausible-looking but wrong prediction, so NIfTI files are
    also checked with nibabel (:func:`medattn.data.io.check_nifti_file`).

    Args:
        path: the input file.
        spatial_dims: the dimension the model needs (2 or 3); None accepts both.

    Raises:
        CaseError: naming the file and the problem.
    """
    from medattn.data.io import ImageReadError, check_nifti_file, open_header

    try:
        reader = open_header(path)
    except ImageReadError as err:
        raise CaseError(str(err)) from err
    components = reader.GetNumberOfComponents()
    if components != 1:
        raise CaseError(
            f"{path}: wrong channel count: {components} components per voxel; give each channel as its "
            "own file (CASE_0000, CASE_0001, ...)"
        )
    if reader.GetDimension() not in (2, 3):
        raise CaseError(
            f"{path}: wrong channel count: a {reader.GetDimension()}D image of size {reader.GetSize()}; "
            "give each channel as its own 3D file (CASE_0000, CASE_0001, ...)"
        )
    if spatial_dims is not None and reader.GetDimension() != spatial_dims:
        raise CaseError(f"{path}: a {reader.GetDimension()}D image of size {reader.GetSize()}, but the model is "
                        f"{spatial_dims}D")
    try:
        check_nifti_file(path)
    except ImageReadError as err:
        raise CaseError(str(err)) from err


def check_finite(array: np.ndarray, files) -> None:
    """Raise :class:`CaseError` naming ``files`` if ``array`` holds NaN or infinite values."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        count = int(np.count_nonzero(~np.isfinite(array)))
        raise CaseError(f"{', '.join(map(str, files))}: {count} voxel(s) are NaN or infinite")


def write_probabilities(case: Case, output_dir: Path, probabilities: np.ndarray, properties: dict) -> None:
    """Write ``{case}.npz`` (key ``probabilities``, (C, z, y, x) float) and ``{case}.pkl``
    atomically, in nnU-Net's format so that ``nnUNetv2_ensemble`` reads them."""
    import pickle

    from medattn.data.io import atomic_write

    npz_path, pkl_path = case.probability_paths(output_dir)
    with atomic_write(npz_path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, probabilities=probabilities)
    with atomic_write(pkl_path, suffix=".pkl") as tmp:
        with open(tmp, "wb") as stream:
            pickle.dump(properties, stream)
