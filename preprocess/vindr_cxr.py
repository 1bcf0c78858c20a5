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

import math
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


# ----------------------------------------------------------------------------- labels and layouts

#: Kaggle's class ids (exact names); "No finding" is 14 and has no boxes.
KAGGLE_CLASSES = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
                  "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
                  "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis")
NO_FINDING = "No finding"
#: PhysioNet's findings that Kaggle lacks: reported with their counts, never silently dropped.
PHYSIONET_ONLY = ("Clavicle fracture", "Edema", "Emphysema", "Enlarged PA", "Lung cavity", "Lung cyst",
                  "Mediastinal shift", "Rib fracture")
#: PhysioNet's global (image-level, box-free) labels; "Other disease" is the test file's spelling.
PHYSIONET_GLOBAL = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", NO_FINDING)
#: The columns of labels.csv after image_id, split and path: "No finding", then Kaggle 0..13.
LABEL_COLUMNS = (NO_FINDING, *KAGGLE_CLASSES)
LABEL_POLICIES = ("any", "majority", "all")
_CANONICAL = {name.lower(): name for name in (*KAGGLE_CLASSES, NO_FINDING, *PHYSIONET_ONLY, *PHYSIONET_GLOBAL)}
_CANONICAL["other disease"] = "Other diseases"


def canonical_class(name: str, where: str) -> str:
    """The table's spelling of a class name, matched case-insensitively.

    Raises:
        ConversionError: for a name the table does not know, naming where it was found.
    """
    found = _CANONICAL.get(str(name).strip().lower())
    if found is None:
        raise ConversionError(f"{where}: unknown class {name!r}; known: {sorted(set(_CANONICAL.values()))}")
    return found


def safe_name(name: str) -> str:
    """A class name as a path component ("Nodule/Mass" -> "Nodule_Mass")."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


@dataclass
class Annotations:
    """Everything read from a VinDr-CXR download, before any pixel is touched."""

    layout: str  # "kaggle" or "physionet"
    images: dict[str, tuple[str, Path]]  # image_id -> (split, DICOM path)
    findings: dict[str, dict[str, set[str]]]  # image_id -> reader -> canonical class names
    boxes: list[dict]  # image_id, rad_id, class, x_min, y_min, x_max, y_max (original pixels)
    notes: list[str]


def detect_layout(src: Path) -> str:
    """"kaggle" (train.csv with class_id) or "physionet" (annotations/annotations_train.csv).

    Raises:
        ConversionError: for neither, saying what was looked for.
    """
    if (src / "annotations" / "annotations_train.csv").is_file():
        return "physionet"
    if (src / "train.csv").is_file():
        return "kaggle"
    raise ConversionError(f"{src}: not a VinDr-CXR download: expected train.csv (Kaggle) or "
                          "annotations/annotations_train.csv (PhysioNet)")


def _dicoms(src: Path, split: str) -> dict[str, Path]:
    folder = src / split
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in (".dicom", ".dcm")}


def _read_csv(path: Path, required: tuple[str, ...]):
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise ConversionError(f"{path}: not a readable CSV ({err})") from err
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ConversionError(f"{path}: missing columns {missing} (has {list(table.columns)})")
    return table


def read_annotations(src: str | os.PathLike) -> Annotations:
    """The images, per-reader findings and boxes of either layout (validated, counts reported).

    Raises:
        ConversionError: naming the file for unknown layouts, missing columns, unknown
            classes, boxes on "No finding" rows, or annotated images without a DICOM file.
    """
    src = Path(src)
    layout = detect_layout(src)
    images = {image_id: ("train", path) for image_id, path in _dicoms(src, "train").items()}
    images |= {image_id: ("test", path) for image_id, path in _dicoms(src, "test").items()}
    box_files = [src / "train.csv"] if layout == "kaggle" else [
        src / "annotations" / f"annotations_{split}.csv" for split in ("train", "test")
        if (src / "annotations" / f"annotations_{split}.csv").is_file()]
    findings: dict[str, dict[str, set[str]]] = {}
    boxes, notes = [], []
    for path in box_files:
        table = _read_csv(path, ("image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"))
        for line, row in enumerate(table.itertuples(index=False), start=2):
            where = f"{path}, line {line}"
            name = canonical_class(row.class_name, where)
            if layout == "kaggle" and "class_id" in table.columns and name in KAGGLE_CLASSES and int(
                    row.class_id) != KAGGLE_CLASSES.index(name):
                raise ConversionError(f"{where}: class_id {row.class_id} does not match {name!r}")
            if row.image_id not in images:
                raise ConversionError(f"{where}: no DICOM file for image {row.image_id} in {src}/train or test")
            findings.setdefault(row.image_id, {}).setdefault(str(row.rad_id), set()).add(name)
            coordinates = [row.x_min, row.y_min, row.x_max, row.y_max]
            has_box = not any(v != v for v in coordinates)  # NaN marks a box-free row
            if name == NO_FINDING and has_box:
                raise ConversionError(f"{where}: a 'No finding' row with a box")
            if has_box:
                boxes.append({"image_id": row.image_id, "rad_id": str(row.rad_id), "class": name,
                              "x_min": float(row.x_min), "y_min": float(row.y_min), "x_max": float(row.x_max),
                              "y_max": float(row.y_max)})
    readers = [len(by_reader) for by_reader in findings.values()]
    if readers:
        counts = {n: readers.count(n) for n in sorted(set(readers))}
        notes.append("readers per annotated image: " + ", ".join(f"{n}: {c} image(s)" for n, c in counts.items()))
    extras = {}
    for by_reader in findings.values():
        for name in set().union(*by_reader.values()) & set(PHYSIONET_ONLY):
            extras[name] = extras.get(name, 0) + 1
    if extras:
        notes.append("PhysioNet-only findings, kept in the COCO files' notes but not in labels.csv's 15 columns: "
                     + ", ".join(f"{k} ({v} image(s))" for k, v in sorted(extras.items())))
    return Annotations(layout, images, findings, boxes, notes)


def image_labels(by_reader: dict[str, set[str]], policy: str = "any") -> dict[str, int]:
    """The 15 labels.csv values of one image from its readers' findings.

    ``any``: a finding named by any reader (the SNA paper's union); ``majority``: by at
    least half of the readers (2 of 3); ``all``: by every reader. "No finding" is 1 only
    when no finding survives.
    """
    if policy not in LABEL_POLICIES:
        raise ValueError(f"unknown label policy {policy!r}; choose one of {list(LABEL_POLICIES)}")
    readers = list(by_reader.values())
    need = {"any": 1, "majority": math.ceil(len(readers) / 2) if readers else 1, "all": len(readers)}[policy]
    labels = {name: int(sum(name in found for found in readers) >= need) if readers else 0
              for name in KAGGLE_CLASSES}
    labels[NO_FINDING] = int(not any(labels.values()))
    return {name: labels[name] for name in LABEL_COLUMNS}


# ----------------------------------------------------------------------------- the conversion run

MANIFEST_COLUMNS = ("image_id", "split", "path", *PixelRecord.__dataclass_fields__, "error")


def _write_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    from medattn.data.io import atomic_write

    with atomic_write(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _previous_manifest(out: Path) -> dict[str, dict]:
    import csv

    path = out / "manifest.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["image_id"]: row for row in csv.DictReader(handle) if not row.get("error")}


def convert_vindr_cxr(src: str | os.PathLike, out: str | os.PathLike, *, jobs: int = 2, label_policy: str = "any",
                      output_bits: int = 8, overwrite: bool = False, progress: bool = True):
    """Convert a VinDr-CXR download (either layout) under ``out``.

    Writes ``images/{split}/{image_id}.png``; ``labels.csv`` (``image_id``, ``split``,
    ``path`` relative to ``out``, then "No finding" and Kaggle 0..13 as 0/1 columns, for
    the labelled images; ``medattn train image --task multilabel`` reads it);
    ``annotations/instances_{split}.json`` (COCO: categories 0..13 by Kaggle id, every
    reader's boxes as ``[x, y, w, h]`` in output pixels, ``rad_id`` kept); ``manifest.csv``
    (one row per image: the :class:`PixelRecord` and the error, if any).

    Images whose PNG and manifest row exist are skipped unless ``overwrite``; every file is
    written atomically. A file that cannot be converted is recorded and the run goes on.

    Returns:
        A :class:`medattn.preprocess.common.ConversionReport`.

    Raises:
        ConversionError: for an unknown layout or bad annotations (before any pixel).
    """
    from medattn.data.io import check_output_folder, remove_stale_temporaries
    from medattn.preprocess.common import ConversionReport, map_cases, warn

    src, out = Path(src), check_output_folder(out, "--out")
    annotations = read_annotations(src)
    report = ConversionReport(out)
    for note in annotations.notes:
        warn(note, report)
    previous = {} if overwrite else _previous_manifest(out)
    for split in ("train", "test"):
        remove_stale_temporaries(out / "images" / split)

    def convert_one(item):
        image_id, (split, path) = item
        target = out / "images" / split / f"{image_id}.png"
        if image_id in previous and target.is_file():
            return previous[image_id]
        array, record = read_radiograph(path, output_bits)
        _write_png(array, target)
        return {"image_id": image_id, "split": split, "path": target.relative_to(out).as_posix(),
                **record.to_dict(), "error": ""}

    done, failures = map_cases(convert_one, {i: (i, v) for i, v in annotations.images.items()}, jobs=jobs,
                               desc="radiographs")
    rows = list(done.values()) + [{"image_id": f.case, "split": annotations.images[f.case][0], "path": "",
                                    "source": str(annotations.images[f.case][1]), "error": f.message}
                                   for f in failures]
    report.converted = sorted(done)
    report.failed = failures
    _write_outputs(out, annotations, sorted(rows, key=lambda r: r["image_id"]), done, label_policy)
    return report


def _write_outputs(out: Path, annotations: Annotations, manifest: list[dict], done: dict, policy: str) -> None:
    import csv
    import io

    from medattn.data.io import write_json_atomic, write_text_atomic

    def table(columns, rows) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    write_text_atomic(out / "manifest.csv", table(MANIFEST_COLUMNS, manifest))
    labelled = [image_id for image_id in sorted(done) if image_id in annotations.findings]
    rows = [{"image_id": i, "split": done[i]["split"], "path": done[i]["path"],
             **image_labels(annotations.findings[i], policy)} for i in labelled]
    write_text_atomic(out / "labels.csv", table(("image_id", "split", "path", *LABEL_COLUMNS), rows))
    for split in ("train", "test"):
        ids = [i for i in sorted(done) if done[i]["split"] == split]
        if ids:
            write_json_atomic(out / "annotations" / f"instances_{split}.json", _coco(ids, done, annotations, policy))


def _coco(ids: list[str], done: dict, annotations: Annotations, policy: str) -> dict:
    number = {image_id: index + 1 for index, image_id in enumerate(ids)}
    images = [{"id": number[i], "file_name": done[i]["path"], "width": int(done[i]["width"]),
               "height": int(done[i]["height"]), "image_id": i} for i in ids]
    boxes, flagged = [], 0
    for box in annotations.boxes:
        if box["image_id"] not in number or box["class"] not in KAGGLE_CLASSES:
            continue
        width, height = int(done[box["image_id"]]["width"]), int(done[box["image_id"]]["height"])
        x0, x1 = sorted((min(max(box["x_min"], 0.0), width), min(max(box["x_max"], 0.0), width)))
        y0, y1 = sorted((min(max(box["y_min"], 0.0), height), min(max(box["y_max"], 0.0), height)))
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            flagged += 1
            continue
        boxes.append({"id": len(boxes) + 1, "image_id": number[box["image_id"]],
                      "category_id": KAGGLE_CLASSES.index(box["class"]), "bbox": [x0, y0, x1 - x0, y1 - y0],
                      "area": (x1 - x0) * (y1 - y0), "iscrowd": 0, "rad_id": box["rad_id"]})
    return {"info": {"description": "VinDr-CXR, converted by medattn", "label_policy": policy,
                     "zero_area_boxes_dropped": flagged, "notes": annotations.notes},
            "images": images, "annotations": boxes,
            "categories": [{"id": index, "name": name} for index, name in enumerate(KAGGLE_CLASSES)]}
