"""DICOM series to a NIfTI (or any SimpleITK-writable) volume.

Reading goes through SimpleITK's ``ImageSeriesReader`` (GDCM underneath), which orders
slices by their position along the slice normal, applies Rescale Slope/Intercept (so CT
comes out in Hounsfield units) and decodes compressed transfer syntaxes such as JPEG 2000
and JPEG-LS. The volume keeps the patient-space geometry of the series (origin = first
slice's Image Position, direction from Image Orientation), so it lines up in physical
space with any label map made for the series, whatever that map's axis order.

A folder (searched recursively) may hold several series; :func:`list_series` describes
them and :func:`convert_dicom` needs ``series_uid`` to pick one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medattn.preprocess.common import ConversionError

#: Largest relative deviation of one slice gap from the median gap that still counts as
#: uniform spacing (scanner positions are stored with limited decimals).
SLICE_GAP_TOLERANCE = 0.01


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found on disk.

    Attributes:
        uid: Series Instance UID ("" when the files carry none, e.g. after anonymisation).
        folder: the folder holding its files.
        files: the files in slice order.
        modality: (0008,0060), "" if absent.
        description: (0008,103E), "" if absent.
        size: (columns, rows) of the first slice.
    """

    uid: str
    folder: Path
    files: tuple[str, ...]
    modality: str
    description: str
    size: tuple[int, int]

    @property
    def label(self) -> str:
        """The UID for messages; anonymised series may have none."""
        return repr(self.uid) if self.uid else "(no Series Instance UID)"

    def describe(self) -> str:
        """One line: UID, slice count, size, modality, description and folder."""
        uid = self.uid or "(no Series Instance UID)"
        return (
            f"{uid}  {len(self.files)} file(s)  {self.size[0]}x{self.size[1]}  "
            f"{self.modality or '?'}  {self.description!r}  in {self.folder}"
        )


class MultipleSeriesError(ConversionError):
    """The folder holds several series and none was chosen; the message lists them."""


def list_series(src: str | os.PathLike) -> list[SeriesInfo]:
    """Every DICOM series under ``src`` (recursively), sorted by folder and UID.

    Raises:
        FileNotFoundError: if ``src`` is not a folder.
    """
    import SimpleITK as sitk

    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder (point --src at the folder holding the DICOM files)")
    found = []
    for folder in sorted({src, *(p for p in src.rglob("*") if p.is_dir())}):
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
            if files:
                found.append(_describe(uid, folder, files))
    return found


def _describe(uid: str, folder: Path, files: tuple[str, ...]) -> SeriesInfo:
    from medattn.data.io import ImageReadError, open_header

    modality = description = ""
    size = (0, 0)
    try:
        reader = open_header(files[0])
        modality = _tag(reader, "0008|0060")
        description = _tag(reader, "0008|103e")
        size = tuple(reader.GetSize()[:2])
    except ImageReadError:
        pass  # an unreadable header still lists the series; reading it reports the error
    return SeriesInfo(uid, folder, files, modality, description, size)


def _tag(reader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def select_series(src: str | os.PathLike, series_uid: str | None = None) -> SeriesInfo:
    """The series to convert: the only one under ``src``, or the one with ``series_uid``.

    Raises:
        FileNotFoundError: if ``src`` is not a folder.
        ConversionError: if there is no series, or ``series_uid`` matches none or several.
        MultipleSeriesError: if several series exist and ``series_uid`` is ``None``.
    """
    series = list_series(src)
    if not series:
        raise ConversionError(f"{src}: no DICOM series found (searched recursively)")
    if series_uid is None:
        if len(series) == 1:
            return series[0]
        listing = "\n".join(f"  {s.describe()}" for s in series)
        raise MultipleSeriesError(
            f"{src} holds {len(series)} DICOM series; choose one with --series-uid UID:\n{listing}"
        )
    matches = [s for s in series if s.uid == series_uid]
    if len(matches) != 1:
        listing = "\n".join(f"  {s.describe()}" for s in series)
        what = "no" if not matches else f"{len(matches)}"
        raise ConversionError(f"{src}: {what} series with UID {series_uid!r}; found:\n{listing}")
    return matches[0]


def read_series(series: SeriesInfo):
    """Read a series as a 3D ``SimpleITK.Image`` in patient coordinates.

    Raises:
        ConversionError: naming the folder for unreadable files, a single 2D slice,
            duplicate slice positions or uneven slice gaps (missing slices).
    """
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise ConversionError(f"{series.folder}: cannot read DICOM series {series.label} ({detail})") from err
    if image.GetDimension() != 3 or image.GetSize()[2] < 2:
        raise ConversionError(
            f"{series.folder}: series {series.label} is not a 3D volume (size {image.GetSize()}); "
            "a single 2D slice cannot be converted"
        )
    if len(series.files) > 1:
        _check_slice_gaps(reader, image, series)
    return image


def _check_slice_gaps(reader, image, series: SeriesInfo) -> None:
    """Uneven gaps mean missing slices; SimpleITK would only warn and stretch the volume."""
    normal = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    positions = []
    for index in range(len(series.files)):
        if not reader.HasMetaDataKey(index, "0020|0032"):
            return  # without Image Position there is nothing to check against
        positions.append([float(v) for v in reader.GetMetaData(index, "0020|0032").split("\\")])
    along = np.sort(np.asarray(positions) @ normal)
    gaps = np.diff(along)
    median = float(np.median(gaps))
    if median <= 0 or np.any(gaps <= 0):
        raise ConversionError(f"{series.folder}: series {series.label} has slices at duplicate positions")
    uneven = np.flatnonzero(np.abs(gaps - median) > SLICE_GAP_TOLERANCE * median)
    if uneven.size:
        raise ConversionError(
            f"{series.folder}: series {series.label} has uneven slice gaps (median {median:.4g} mm, "
            f"gap after slice {int(uneven[0])} is {gaps[uneven[0]]:.4g} mm); are slices missing?"
        )


@dataclass(frozen=True)
class DicomResult:
    """What :func:`convert_dicom` wrote.

    Attributes:
        output: the volume file.
        series: the series it came from.
        geometry: its :class:`~medattn.data.io.Geometry`.
        dtype: numpy dtype of the voxels (int16 for most CT, after rescaling).
    """

    output: Path
    series: SeriesInfo
    geometry: object
    dtype: str


def convert_dicom(src: str | os.PathLike, out: str | os.PathLike, series_uid: str | None = None) -> DicomResult:
    """Convert one DICOM series to a volume file, written atomically.

    Args:
        src: folder holding the series (searched recursively).
        out: output file; its suffix picks the format (``.nii.gz``, ``.nrrd``, ``.mha``).
        series_uid: Series Instance UID to pick when ``src`` holds several series.

    Returns:
        A :class:`DicomResult`.

    Raises:
        ValueError: if ``out`` has no image suffix.
        FileNotFoundError: if ``src`` is not a folder.
        MultipleSeriesError: if several series exist and none is chosen (lists them).
        ConversionError: for no series, an unknown UID, unreadable files or a non-3D series.
    """
    import SimpleITK as sitk

    from medattn.data.io import Geometry, check_output_folder, image_suffix, remove_stale_temporaries, write_image

    if not image_suffix(out):
        raise ValueError(f"{out}: output must end in .nii.gz, .nii, .nrrd, .mha or .mhd")
    if Path(out).is_dir():
        raise ValueError(f"--out {out}: is a folder; give the output file, e.g. {Path(out) / 'ct.nii.gz'}")
    remove_stale_temporaries(check_output_folder(Path(out).parent, "--out"), {Path(out).name})
    series = select_series(src, series_uid)
    image = read_series(series)
    geometry = Geometry.of(image)
    array = sitk.GetArrayFromImage(image)
    written = write_image(array, geometry, out)
    return DicomResult(output=written, series=series, geometry=geometry, dtype=str(array.dtype))
