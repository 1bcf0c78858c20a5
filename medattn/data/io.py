"""Geometry-safe image I/O and atomic file writes.

Every file medattn writes goes through :func:`atomic_write`, so an interrupted run never
leaves a truncated file behind: data go to a temporary file in the destination folder,
which is renamed over the target only once it is complete (``os.replace`` is atomic on
one file system).

Images are read with SimpleITK, which handles NIfTI, NRRD, MHA and DICOM alike, and are
returned as numpy arrays in SimpleITK's (z, y, x) order together with their
:class:`Geometry`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

#: File name endings medattn treats as images, longest first so ".nii.gz" wins over ".gz".
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file."""


class NonFiniteImageError(ImageReadError):
    """An image holds NaN or infinite voxels; the message names the file and the counts."""


class GeometryMismatchError(ValueError):
    """Two images that must share a grid do not; the message names the field and values."""


@dataclass(frozen=True)
class Geometry:
    """The physical grid of an image, in SimpleITK's conventions.

    Attributes:
        shape: array shape in (z, y, x) order, as returned by ``GetArrayFromImage``.
        spacing: voxel size in mm, in (x, y, z) order.
        origin: physical position of the first voxel, (x, y, z).
        direction: row-major direction cosine matrix, flattened.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image) -> "Geometry":
        """Geometry of a ``SimpleITK.Image``."""
        return cls(
            shape=tuple(reversed(image.GetSize())),
            spacing=tuple(image.GetSpacing()),
            origin=tuple(image.GetOrigin()),
            direction=tuple(image.GetDirection()),
        )

    def apply_to(self, image) -> None:
        """Copy spacing, origin and direction onto a ``SimpleITK.Image`` of this shape."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    def index_to_physical(self) -> np.ndarray:
        """The (n+1, n+1) affine from an array index (z, y, x order) to a physical (LPS) point.

        SimpleITK maps its index ``i`` (x, y, z order) to ``origin + direction @ (spacing * i)``;
        the array index is ``i`` reversed.
        """
        ndim = len(self.spacing)
        direction = np.asarray(self.direction, dtype=float).reshape(ndim, ndim)
        matrix = np.eye(ndim + 1)
        matrix[:ndim, :ndim] = (direction * np.asarray(self.spacing, dtype=float))[:, ::-1]
        matrix[:ndim, ndim] = self.origin
        return matrix

    @classmethod
    def from_index_to_physical(cls, shape, matrix) -> "Geometry":
        """The geometry of an array of ``shape`` whose index maps to physical (LPS) points
        through ``matrix`` (the inverse of :meth:`index_to_physical`).

        Raises:
            ValueError: when the matrix is not a scaled rotation (axes not orthogonal).
        """
        matrix = np.asarray(matrix, dtype=float)
        ndim = len(shape)
        columns = matrix[:ndim, :ndim][:, ::-1]  # SimpleITK's index order
        spacing = np.linalg.norm(columns, axis=0)
        direction = columns / spacing
        if not np.allclose(direction.T @ direction, np.eye(ndim), atol=1e-6):
            raise ValueError(f"the index-to-physical matrix {matrix.tolist()} has non-orthogonal axes")
        return cls(tuple(int(s) for s in shape), tuple(spacing.tolist()), tuple(matrix[:ndim, ndim].tolist()),
                   tuple(direction.ravel().tolist()))

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        """Spacing in array (z, y, x) order, the order distance transforms need."""
        return tuple(reversed(self.spacing))


def check_same_geometry(
    reference: Geometry,
    other: Geometry,
    *,
    names: tuple[str, str] = ("reference", "other"),
    context: str = "",
    atol: float = 1e-3,
    rtol: float = 1e-4,
) -> None:
    """Raise :class:`GeometryMismatchError` unless both grids agree within tolerance.

    Args:
        reference: the geometry the other must match.
        other: the geometry being checked.
        names: how to call the two images in the message.
        context: prefix for the message, typically the case or file name.
        atol: absolute tolerance for spacing, origin (mm) and direction cosines.
        rtol: relative tolerance for spacing and origin.

    Raises:
        GeometryMismatchError: naming the first field that differs and both values.
    """
    prefix = f"{context}: " if context else ""
    if reference.shape != other.shape:
        raise GeometryMismatchError(
            f"{prefix}shape differs: {names[0]} {reference.shape} vs {names[1]} {other.shape}"
        )
    for field in ("spacing", "origin", "direction"):
        a = np.asarray(getattr(reference, field), dtype=float)
        b = np.asarray(getattr(other, field), dtype=float)
        if a.shape != b.shape or not np.allclose(a, b, atol=atol, rtol=rtol):
            raise GeometryMismatchError(
                f"{prefix}{field} differs: {names[0]} {_fmt(a)} vs {names[1]} {_fmt(b)}"
            )


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values.ravel()) + ")"


def image_suffix(path: str | os.PathLike) -> str:
    """The image suffix of ``path`` (".nii.gz", ".nrrd", ...) or "" if it is not an image."""
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), "")


@dataclass(frozen=True)
class CaseFailure:
    """One case a batch (conversion, prediction) could not do, and why; ``message`` names
    the file or case, so that it can be printed as it is."""

    case: str
    message: str


def case_name(path: str | os.PathLike) -> str:
    """File name without its image suffix: ``case_01.nii.gz`` gives ``case_01``."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else Path(name).stem


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and image_suffix(p))


def open_header(path: str | os.PathLike):
    """SimpleITK's reader of ``path`` with the header read and no voxels (for the channel
    count, dimension and pixel type beside the geometry).

    Raises:
        ImageReadError: naming the file when its header cannot be read.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        raise ImageReadError(f"{path}: cannot read image header ({lines[-1] if lines else 'unknown error'})") from err
    return reader


def header_geometry(reader) -> Geometry:
    """The :class:`Geometry` of an :func:`open_header` reader."""
    return Geometry(shape=tuple(reversed(reader.GetSize())), spacing=tuple(reader.GetSpacing()),
                    origin=tuple(reader.GetOrigin()), direction=tuple(reader.GetDirection()))


def read_header(path: str | os.PathLike) -> Geometry:
    """The :class:`Geometry` of an image file, reading only its header (the one header
    reader of medattn: evaluation, conversion, training and prediction use it).

    Raises:
        ImageReadError: naming the file when its header cannot be read.
    """
    return header_geometry(open_header(path))


#: The most a file's voxels may expand beyond its size on disk: deflate (gzip, zlib) cannot
#: compress better than about 1032:1, so a header claiming more describes data that is not there.
MAX_EXPANSION = 1100


def check_declared_size(reader, path: str | os.PathLike) -> None:
    """Refuse a header whose dimensions declare more voxels than the file can hold, before
    anything allocates them (a corrupt or hostile header could ask for terabytes).

    The bound is sound because a voxel value takes at least one byte and deflate (NIfTI's
    gzip, MHA's zlib, PNG) expands at most about 1032-fold, headers included: an all-zero
    uint8 mask written compressed by SimpleITK comes to 1017 values per byte. NRRD may use
    bzip2, which has no such limit, and ``.mhd``, ``.nhdr`` and ``.hdr`` headers name a
    separate data file: those are not bounded here.

    Args:
        reader: an :func:`open_header` reader of ``path``.

    Raises:
        ImageReadError: naming the file, the declared size and the file's size.
    """
    if Path(path).suffix.lower() in (".nrrd", ".mhd", ".nhdr", ".hdr"):
        return
    size = [int(v) for v in reader.GetSize()]
    values = math.prod(size) * max(1, int(reader.GetNumberOfComponents()))
    on_disk = Path(path).stat().st_size
    if values > MAX_EXPANSION * on_disk:
        raise ImageReadError(f"{path}: header declares {size} voxels ({values:,} values), more than a file of "
                             f"{on_disk:,} bytes can hold: corrupt or not an image")


def read_image(path: str | os.PathLike):
    """Read an image with SimpleITK.

    Returns:
        ``(array, geometry)``: the voxel array in (z, y, x) order and its :class:`Geometry`.

    Raises:
        ImageReadError: if the file is missing, unreadable or corrupt, naming the file.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    check_declared_size(open_header(path), path)
    try:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as err:  # SimpleITK reports every read failure as RuntimeError
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise ImageReadError(f"{path}: cannot read image ({first_line})") from err
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{path}: expected a single-channel image, got "
            f"{image.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    return array, Geometry.of(image)


def check_nifti_file(path: str | os.PathLike) -> None:
    """Catch what SimpleITK's NIfTI reader lets through: truncated or corrupt files and
    NaN/infinite voxels. Files of other formats are left alone.

    SimpleITK reads a truncated ``.nii``/``.nii.gz`` as if the missing voxels were zeros,
    does not check the gzip CRC, and returns NaN voxels as 0, so all of these would flow on
    as plausible but wrong data. nibabel reads the header and the stored values as they are;
    reading a ``.gz`` stream to its end checks its CRC.

    Raises:
        ImageReadError: for an unreadable, corrupt or truncated file, naming it.
        NonFiniteImageError: for NaN or infinite voxels, naming the file and the counts.
    """
    import gzip
    import zlib

    import nibabel

    path = Path(path)
    if image_suffix(path) not in (".nii", ".nii.gz"):
        return
    try:
        proxy = nibabel.load(str(path)).dataobj
        dtype = np.dtype(proxy.dtype)
        # The proxy's offset is where the data start, even when the header's vox_offset is 0.
        expected = int(proxy.offset) + math.prod(int(n) for n in proxy.shape) * dtype.itemsize
        if path.name.lower().endswith(".gz"):
            size = 0
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    size += len(chunk)
        else:
            size = path.stat().st_size
        if size < expected:
            raise ImageReadError(f"{path}: file is truncated ({size} bytes, its header needs {expected})")
        stored = np.asanyarray(proxy) if dtype.kind == "f" else None
    except (EOFError, OSError, zlib.error, ValueError, nibabel.filebasedimages.ImageFileError,
            nibabel.spatialimages.HeaderDataError) as err:  # malformed headers raise the last two
        raise ImageReadError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err
    if stored is not None and not np.isfinite(stored).all():
        n_nan = int(np.isnan(stored).sum())
        n_inf = int(np.count_nonzero(~np.isfinite(stored))) - n_nan
        raise NonFiniteImageError(f"{path}: {n_nan} NaN and {n_inf} infinite voxel(s)")


def check_output_folder(path: str | os.PathLike, option: str = "--output") -> Path:
    """Refuse an output folder that is a file or lies under one, before any work is done
    (the operating system would only say "[Errno 17] File exists" or "Not a directory").

    Raises:
        ValueError: naming the option, the path and the file in the way.
    """
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is a file" if candidate == path else f"lies under {candidate}, which is a file"
                raise ValueError(f"{option} {path}: {where}, not a folder")
            break
    return path


#: Formats whose header names a separate voxel file (``m.mhd`` + ``m.zraw``).
DETACHED_HEADER_SUFFIXES = (".mhd", ".nhdr")


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> Path:
    """Write ``array`` with ``geometry`` to ``path`` atomically (format from the suffix).

    A format with a detached header (:data:`DETACHED_HEADER_SUFFIXES`) is written into a
    temporary folder beside ``path`` under its final names, so that the header names the
    voxel file as it will be called; the voxel file is moved into place first, the header
    last. A kill before that leaves only the temporary folder, which
    :func:`remove_stale_temporaries` removes.

    Raises:
        GeometryMismatchError: if the array's shape is not the geometry's shape.
    """
    import SimpleITK as sitk

    array = np.asarray(array)
    if tuple(array.shape) != tuple(geometry.shape):
        raise GeometryMismatchError(
            f"{path}: array shape {tuple(array.shape)} does not match geometry shape {geometry.shape}"
        )
    image = sitk.GetImageFromArray(array)
    geometry.apply_to(image)
    path = Path(path)
    if path.suffix.lower() in DETACHED_HEADER_SUFFIXES:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.", suffix=".tmpdir", dir=path.parent) as folder:
            staged = Path(folder) / path.name
            sitk.WriteImage(image, str(staged), useCompression=True)
            for written in Path(folder).iterdir():
                if written != staged:
                    os.replace(written, path.parent / written.name)
            os.replace(staged, path)
        return path
    with atomic_write(path, suffix=image_suffix(path) or path.suffix) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


#: The names :func:`atomic_write` and :func:`write_image` give their temporaries:
#: ``.{target name}.{8 random characters}.tmp{suffix}`` files and ``...tmpdir`` folders.
_TEMPORARY = re.compile(r"\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp.*")


def remove_stale_temporaries(folder: str | os.PathLike, targets=None) -> list[Path]:
    """Delete the temporaries that a killed run of :func:`atomic_write` or
    :func:`write_image` left in ``folder`` (every command runs this on its output folder
    before it writes).

    Args:
        folder: the output folder (nothing happens when it does not exist).
        targets: only the temporaries of these file names; None: every one. Commands that
            several processes may share (``predict --num-parts``) name their own files.

    Returns:
        The removed paths.
    """
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or (targets is not None and match["target"] not in targets):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    The temporary name keeps ``suffix`` (e.g. ".nii.gz") because writers such as
    SimpleITK choose the format from the file name. On any exception the temporary file
    is removed and ``path`` is left untouched.

    Example:
        >>> with atomic_write("out/metrics.csv") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("case,label\\n")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix or "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file private (0600); give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_set_atomic(folder: str | os.PathLike, contents: dict[str, str], stale: Iterable[str] = ()) -> dict[str, Path]:
    """Replace a set of text files in ``folder`` as a unit.

    Every file is written to its temporary (named as :func:`atomic_write` names them, so
    :func:`remove_stale_temporaries` finds what a kill leaves) before any is renamed: a
    failure while writing (a full disk, an error) leaves the previous set untouched. Then
    all are renamed, and the files of ``stale`` (members of the set this run does not
    produce, e.g. a comparison table from an earlier run with ``--compare``) are removed,
    so the folder never mixes two runs' outputs.

    Returns:
        File name to path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, text in contents.items():
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{''.join(Path(name).suffixes)}",
                                            dir=folder)
            staged.append((Path(tmp_name), folder / name))
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
            os.chmod(tmp_name, 0o666 & ~_umask())
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    for name in stale:
        if name not in contents:
            (folder / name).unlink(missing_ok=True)
    return {name: folder / name for name in contents}


def json_text(obj, indent: int = 2) -> str:
    """``obj`` as JSON text ending in a newline; NaN becomes ``null`` (valid JSON)."""
    import json

    return json.dumps(_nan_to_none(obj), indent=indent, sort_keys=False) + "\n"


def write_json_atomic(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; NaN is written as ``null``."""
    return write_text_atomic(path, json_text(obj, indent))


def _nan_to_none(obj):
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, np.generic):
        return _nan_to_none(obj.item())
    return obj
