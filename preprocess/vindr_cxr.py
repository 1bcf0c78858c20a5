"""VinDr-CXR chest radiographs: the DICOM pixel pipeline (the first part of ``medattn convert vindr-cxr``).

:func:`read_radiograph` turns one radiograph into an 8- or 16-bit grayscale array and a
:class:`PixelRecord` of every choice it made (the row of the converter's manifest):

1. **Decode** with pydicom >= 3 (``Dataset.pixel_array``, ``pydicom.pixels``): JPEG 2000
   through pylibjpeg-openjpeg or Pillow, JPEG Lossless and JPEG-LS through
   pylibjpeg-libjpeg. A missing decoder is an error naming the transfer syntax and the
   package to install. A file without a Transfer Syntax UID (some PhysioNet files) is
   repaired by sniffing its Pixel Data: encapsulated fragments starting with the JPEG 2000
   codestream marker ``FF4F FF51``, else native little endian.
2. **Effective bit depth** from the decoded data: JPEG 2000 files of this dataset carry
   wrong Bits Stored values (pydicom 3 takes the precision from the codestream), and any
   range computed from a wrong Bits Stored (windowing's output range, inversion) is wrong.
   The record keeps both.
3. **Modality LUT** (Rescale Slope/Intercept or the Modality LUT Sequence), then **VOI**:
   the VOI LUT Sequence when present, else the first Window Center/Width pair (the record
   says which of how many), else the full range of the stored values after rescaling (never
   a per-image min-max, which would make each image's contrast its own).
4. **MONOCHROME1** is inverted within the output range, ``y_min + y_max - y``, not against
   the image's own maximum; ``pydicom.pixels.apply_presentation_lut`` does not do this.
5. **Output**: the VOI range mapped linearly to 0..255 (default) or 0..65535.

Unusable files (no Pixel Data, colour, several frames, undecodable) raise
:class:`RadiographError` naming the file; the converter records them per file and goes on.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medattn.preprocess.common import ConversionError

__all__ = ["DECODER_PACKAGES", "DecoderMissingError", "PixelRecord", "RadiographError", "read_radiograph"]

#: Transfer syntax UID -> the package that decodes it (for the missing-decoder message).
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg",  # JPEG extended
}
_J2K_MARKER = b"\xff\x4f\xff\x51"
#: Transfer syntaxes that may lose information (JPEG 2000, JPEG baseline/extended, JPEG-LS near-lossless).
LOSSY = ("1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81")


class RadiographError(ConversionError):
    """One radiograph cannot be converted; the message names the file and the reason."""


class DecoderMissingError(RadiographError):
    """No installed decoder handles the file's transfer syntax; the message names the package."""


@dataclass
class PixelRecord:
    """How one radiograph was converted (a manifest row)."""

    source: str
    transfer_syntax: str
    transfer_syntax_repaired: bool
    photometric: str
    bits_stored: int
    bits_effective: int
    voi: str
    inverted: bool
    pixel_spacing: list[float] | None
    spacing_source: str
    lossy: bool
    width: int
    height: int
    output_bits: int

    def to_dict(self) -> dict:
        return asdict(self)


def _read(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as err:
        raise RadiographError(f"{path}: not a DICOM file ({err})") from err
    except FileNotFoundError as err:
        raise RadiographError(f"{path}: file not found") from err
    except Exception as err:  # pydicom raises several types for cut-off data elements
        raise RadiographError(f"{path}: unreadable DICOM ({type(err).__name__}: {err})") from err


def _repair_transfer_syntax(ds, path: Path) -> bool:
    """Set a missing Transfer Syntax UID from the Pixel Data's shape; whether it was missing."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000, JPEG2000Lossless

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return False
    if "PixelData" not in ds:
        return False
    data = ds.PixelData
    if data[:4] == b"\xfe\xff\x00\xe0":  # an encapsulated item tag: compressed fragments
        if _J2K_MARKER not in data[:4096]:
            raise RadiographError(f"{path}: no Transfer Syntax UID and compressed Pixel Data that is not JPEG 2000; "
                                  "cannot tell how to decode it")
        lossy = str(ds.get("LossyImageCompression", "00")) == "01"
        uid = JPEG2000 if lossy else JPEG2000Lossless
    else:
        uid = ExplicitVRLittleEndian if ds.is_implicit_VR is False else "1.2.840.10008.1.2"
    ds.file_meta = meta if meta is not None else FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid
    return True


def _check_layout(ds, path: Path) -> None:
    if "PixelData" not in ds:
        raise RadiographError(f"{path}: no Pixel Data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise RadiographError(f"{path}: {ds.SamplesPerPixel} samples per pixel ({ds.get('PhotometricInterpretation')});"
                              " a radiograph is grayscale")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise RadiographError(f"{path}: {ds.NumberOfFrames} frames; a radiograph has one")
    if ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        raise RadiographError(f"{path}: photometric interpretation {ds.get('PhotometricInterpretation')!r}; "
                              "MONOCHROME1 or MONOCHROME2 expected")


def _decode(ds, path: Path) -> np.ndarray:
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        return ds.pixel_array
    except (RuntimeError, NotImplementedError) as err:
        text = str(err)
        if "plugin" in text.lower() or "decod" in text.lower() or "missing" in text.lower():
            package = DECODER_PACKAGES.get(str(syntax), "pylibjpeg with its plugins")
            raise DecoderMissingError(f"{path}: no decoder for {syntax.name} ({syntax}); install {package} "
                                      f"(pip install {package})") from err
        raise RadiographError(f"{path}: cannot decode the pixels ({type(err).__name__}: {text[:200]})") from err
    except Exception as err:  # truncated or corrupt pixel data
        raise RadiographError(f"{path}: cannot decode the pixels ({type(err).__name__}: {str(err)[:200]})") from err


def _effective_bits(ds, stored: np.ndarray) -> int:
    declared = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    peak = int(np.abs(stored).max()) if stored.size else 0
    needed = max(1, peak.bit_length() + (1 if signed else 0))
    return needed if needed > declared else declared


def _modality_range(ds, bits: int) -> tuple[float, float]:
    """The range of the stored values after the rescale (the full range when no window)."""
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    values = sorted((low * slope + intercept, high * slope + intercept))
    return values[0], values[1]


def _voi(ds, values: np.ndarray, bits: int) -> tuple[np.ndarray, float, float, str]:
    """The VOI-transformed image with its output range and a description of the VOI used."""
    from pydicom.pixels import apply_voi_lut, apply_windowing

    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        out = apply_voi_lut(values, ds, index=0, prefer_lut=True)
        lut_bits = int(item.LUTDescriptor[2])
        return out.astype(np.float64), 0.0, float(2**lut_bits - 1), f"VOI LUT Sequence (1 of {len(ds.VOILUTSequence)})"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        centers = ds.WindowCenter if ds["WindowCenter"].VM > 1 else [ds.WindowCenter]
        widths = ds.WindowWidth if ds["WindowWidth"].VM > 1 else [ds.WindowWidth]
        # apply_windowing maps to the range Bits Stored allows: give it the effective depth.
        original = ds.BitsStored
        ds.BitsStored = bits
        try:
            out = apply_windowing(values.astype(np.float64), ds, index=0)
        finally:
            ds.BitsStored = original
        low, high = _modality_range(ds, bits) if "ModalityLUTSequence" not in ds else (0.0, float(2**bits - 1))
        description = f"window center {float(centers[0]):g}, width {float(widths[0]):g} (1 of {len(centers)})"
        return out, low, high, description
    low, high = _modality_range(ds, bits)
    return values.astype(np.float64), low, high, "full range (no window, no VOI LUT)"


def _spacing(ds) -> tuple[list[float] | None, str]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return [float(v) for v in value], keyword
    return None, "none (absent or zero)"


def read_radiograph(path: str | os.PathLike, output_bits: int = 8) -> tuple[np.ndarray, PixelRecord]:
    """One radiograph as a (rows, columns) uint8 or uint16 array, and how it was made.

    Args:
        path: a DICOM file (VinDr-CXR's are ``{image_id}.dicom``).
        output_bits: 8 or 16.

    Raises:
        RadiographError: naming the file (DecoderMissingError names the package too).
    """
    from pydicom.pixels import apply_modality_lut

    if output_bits not in (8, 16):
        raise ValueError(f"output_bits must be 8 or 16, got {output_bits!r}")
    path = Path(path)
    ds = _read(path)
    repaired = _repair_transfer_syntax(ds, path)
    _check_layout(ds, path)
    stored = _decode(ds, path)
    bits = _effective_bits(ds, stored)
    values = apply_modality_lut(stored, ds)
    out, low, high, voi = _voi(ds, values, bits)
    scale = (out - low) / (high - low) if high > low else np.zeros_like(out)
    scale = np.clip(scale, 0.0, 1.0)
    inverted = ds.PhotometricInterpretation == "MONOCHROME1"
    if inverted:  # within the output range: y_min + y_max - y
        scale = 1.0 - scale
    top = 2**output_bits - 1
    array = np.rint(scale * top).astype(np.uint8 if output_bits == 8 else np.uint16)
    spacing, source = _spacing(ds)
    record = PixelRecord(
        source=str(path), transfer_syntax=str(ds.file_meta.TransferSyntaxUID), transfer_syntax_repaired=repaired,
        photometric=str(ds.PhotometricInterpretation), bits_stored=int(ds.get("BitsStored", 0)),
        bits_effective=bits, voi=voi, inverted=inverted, pixel_spacing=spacing, spacing_source=source,
        lossy=str(ds.get("LossyImageCompression", "00")) == "01" or str(ds.file_meta.TransferSyntaxUID) in LOSSY,
        width=int(ds.Columns), height=int(ds.Rows), output_bits=output_bits)
    return array, record
