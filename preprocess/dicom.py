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

import dataclasses
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
        skipped: ``(file, reason)`` for each DICOM file in ``folder`` that no series of the
            folder uses (GDCM leaves out truncated or unreadable slices without a word).
    """

    uid: str
    folder: Path
    files: tuple[str, ...]
    modality: str
    description: str
    size: tuple[int, int]
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """The UID for messages; anonymised series may have none."""
        return repr(self.uid) if self.uid else "(no Series Instance UID)"

    def describe(self) -> str:
        """One line: UID, slice count, size, modality, description and folder."""
        uid = self.uid or "(no Series Instance UID)"
        skipped = f"  ({len(self.skipped)} file(s) in the folder skipped: " + "; ".join(
            f"{Path(f).name}: {why}" for f, why in self.skipped) + ")" if self.skipped else ""
        return (
            f"{uid}  {len(self.files)} file(s)  {self.size[0]}x{self.size[1]}  "
            f"{self.modality or '?'}  {self.description!r}  in {self.folder}{skipped}"
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
        in_folder = []
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
            if files:
                in_folder.append(_describe(uid, folder, files))
        skipped = skipped_files(folder, {f for s in in_folder for f in s.files})
        found += [dataclasses.replace(s, skipped=skipped) for s in in_folder]
    return found


def skipped_files(folder: Path, used: set[str]) -> tuple[tuple[str, str], ...]:
    """``(file, reason)`` for the DICOM files in ``folder`` that no series uses.

    A file counts as DICOM when it has the "DICM" marker after its 128-byte preamble or a
    ``.dcm`` suffix; other files (notes, JSON sidecars) and the DICOMDIR index are not
    slices and are left alone.
    """
    used_paths = {Path(f).resolve() for f in used}
    skipped = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if path.resolve() in used_paths or path.name.upper() == "DICOMDIR" or not _looks_like_dicom(path):
            continue
        skipped.append((str(path), _why_unreadable(path)))
    return tuple(skipped)


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def _why_unreadable(path: Path) -> str:
    """Why the series reader left ``path`` out, in a few words (read with pydicom)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        return "not a valid DICOM file"
    except Exception as err:  # pydicom raises several types for cut-off data elements
        return f"unreadable, probably truncated ({type(err).__name__}: {str(err).strip()[:80]})"
    try:
        if "PixelData" not in ds:
            return "no pixel data"
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if syntax is None:
            return "no Transfer Syntax UID in its file meta information"
        expected = int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) * int(ds.get("SamplesPerPixel", 1)) * int(
            ds.get("NumberOfFrames", 1) or 1) * int(ds.get("BitsAllocated", 16)) // 8
        if not syntax.is_compressed and len(ds.PixelData) < expected:
            return f"truncated: {len(ds.PixelData)} of {expected} bytes of pixel data"
    except Exception as err:  # a damaged header: say what pydicom found
        return f"damaged header ({type(err).__name__}: {str(err).strip()[:80]})"
    return "left out by the series reader (GDCM), e.g. missing position or orientation tags"


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


def read_series(series: SeriesInfo, allow_missing: bool = False):
    """Read a series as a 3D ``SimpleITK.Image`` in patient coordinates.

    Args:
        series: from :func:`list_series`.
        allow_missing: convert although DICOM files of the series' folder were skipped
            (:attr:`SeriesInfo.skipped`); they are still named on the way.

    Raises:
        ConversionError: naming the folder for unreadable files, a single 2D slice,
            duplicate slice positions or uneven slice gaps (missing slices), and naming
            every skipped file unless ``allow_missing``.
    """
    import SimpleITK as sitk

    if series.skipped and not allow_missing:
        listing = "\n".join(f"  {name}: {why}" for name, why in series.skipped)
        raise ConversionError(f"{series.folder}: {len(series.skipped)} DICOM file(s) beside series {series.label} "
                              f"were not read, so the volume would lack those slices:\n{listing}\n"
                              "fix or remove them, or pass --allow-missing to convert without them")

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
        text = reader.GetMetaData(index, "0020|0032")
        try:
            position = [float(v) for v in text.split("\\")]
        except ValueError:
            position = []
        if len(position) != 3 or not np.all(np.isfinite(position)):
            raise ConversionError(f"{series.files[index]}: Image Position (Patient) (0020,0032) is {text.strip()!r}, "
                                  "not three numbers; the slice cannot be placed in the volume")
        positions.append(position)
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


def convert_dicom(src: str | os.PathLike, out: str | os.PathLike, series_uid: str | None = None,
                  allow_missing: bool = False) -> DicomResult:
    """Convert one DICOM series to a volume file, written atomically.

    Args:
        src: folder holding the series (searched recursively).
        out: output file; its suffix picks the format (``.nii.gz``, ``.nrrd``, ``.mha``).
        series_uid: Series Instance UID to pick when ``src`` holds several series.
        allow_missing: convert although some DICOM files beside the series were skipped.

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
    image = read_series(series, allow_missing)
    geometry = Geometry.of(image)
    array = sitk.GetArrayFromImage(image)
    written = write_image(array, geometry, out)
    return DicomResult(output=written, series=series, geometry=geometry, dtype=str(array.dtype))
