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
from medattn.preprocess.vindr_boxes import to_original  # maps predicted boxes back: part of this API

__all__ = ["DECODER_PACKAGES", "ConvertOptions", "DecoderMissingError", "PixelRecord", "RadiographError",
           "convert_vindr_cxr", "image_labels", "read_annotations", "read_radiograph", "to_original"]

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
    top = 2**output_bits - 1
    inverted = ds.PhotometricInterpretation == "MONOCHROME1"
    # in place on the VOI output (a float64 copy of its own): two conversions run at once
    # compete for memory bandwidth, not for cores
    scale = out if out.dtype == np.float64 and out is not values else out.astype(np.float64)
    if high > low:
        scale -= low
        scale *= top / (high - low)
    else:
        scale.fill(0.0)
    np.clip(scale, 0.0, top, out=scale)
    if inverted:  # within the output range: y_min + y_max - y
        np.subtract(top, scale, out=scale)
    np.rint(scale, out=scale)
    array = scale.astype(np.uint8 if output_bits == 8 else np.uint16)
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
    """A class name as a path component: path separators and characters Windows forbids
    become "_" ("Nodule/Mass" -> "Nodule_Mass"; "Pleural effusion" stays). Used for the
    nnU-Net dataset's label names, which downstream tools turn into file names."""
    return "".join("_" if ch in '/\\:*?"<>|' else ch for ch in name)


@dataclass
class Annotations:
    """Everything read from a VinDr-CXR download, before any pixel is touched.

    ``findings`` give the image labels: from PhysioNet's ``image_labels_*.csv`` when present
    (``label_source`` says which), else from the box files' class names. ``box_readers`` are
    the readers of each image in the box files (the denominator of a fused box's agreement).
    """

    layout: str  # "kaggle" or "physionet"
    images: dict[str, tuple[str, Path]]  # image_id -> (split folder, DICOM path)
    findings: dict[str, dict[str, set[str]]]  # image_id -> reader -> canonical class names
    box_readers: dict[str, set[str]]
    boxes: list[dict]  # image_id, rad_id, class, x_min, y_min, x_max, y_max (original pixels)
    notes: list[str]
    label_source: str = "box files"


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


def read_annotations(src: str | os.PathLike, exclude_readers=()) -> Annotations:
    """The images, per-reader findings and boxes of either layout (validated, counts reported).

    Args:
        src: the download.
        exclude_readers: reader ids (e.g. ``R8``) whose findings and boxes are left out.

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
    excluded = {str(r) for r in exclude_readers}
    findings: dict[str, dict[str, set[str]]] = {}
    boxes, notes, dropped = [], [], 0
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
            coordinates = [row.x_min, row.y_min, row.x_max, row.y_max]
            has_box = not any(v != v for v in coordinates)  # NaN marks a box-free row
            if name == NO_FINDING and has_box:
                raise ConversionError(f"{where}: a 'No finding' row with a box")
            if str(row.rad_id) in excluded:
                dropped += 1
                continue
            findings.setdefault(row.image_id, {}).setdefault(str(row.rad_id), set()).add(name)
            if has_box:
                boxes.append({"image_id": row.image_id, "rad_id": str(row.rad_id), "class": name,
                              "x_min": float(row.x_min), "y_min": float(row.y_min), "x_max": float(row.x_max),
                              "y_max": float(row.y_max)})
    if excluded:
        notes.append(f"--exclude-readers {','.join(sorted(excluded))}: {dropped} annotation row(s) left out")
    box_readers = {image_id: set(by_reader) for image_id, by_reader in findings.items()}
    annotations = Annotations(layout, images, findings, box_readers, boxes, notes)
    if layout == "physionet":
        _use_image_labels(src, annotations, excluded)
    readers = [len(by_reader) for by_reader in annotations.findings.values()]
    if readers:
        counts = {n: readers.count(n) for n in sorted(set(readers))}
        notes.append("readers per labelled image: " + ", ".join(f"{n}: {c} image(s)" for n, c in counts.items()))
    extras = {}
    for by_reader in annotations.findings.values():
        for name in set().union(*by_reader.values()) & set(PHYSIONET_ONLY + PHYSIONET_GLOBAL[:-1]):
            extras[name] = extras.get(name, 0) + 1
    if extras:
        notes.append("PhysioNet labels outside labels.csv's 15 columns (kept in this note, not dropped silently): "
                     + ", ".join(f"{k} ({v} image(s))" for k, v in sorted(extras.items())))
    return annotations


#: Spellings of PhysioNet's reader column in image_labels_*.csv.
_READER_COLUMNS = ("rad_id", "rad_ID", "radiologist_id")


def _use_image_labels(src: Path, annotations: Annotations, excluded: set[str]) -> None:
    """Replace the box files' findings by PhysioNet's image_labels_{train,test}.csv where present.

    The train file has one row per reader; the test file, the consensus (reader ``consensus``).
    """
    found = []
    for split in ("train", "test"):
        path = src / "annotations" / f"image_labels_{split}.csv"
        if not path.is_file():
            continue
        found.append(path.name)
        table = _read_csv(path, ("image_id",)).rename(columns={"Other disease": "Other diseases"})
        reader_column = next((c for c in _READER_COLUMNS if c in table.columns), None)
        classes = {column: canonical_class(column, f"{path}, header")
                   for column in table.columns if column not in ("image_id", reader_column)}
        by_image: dict[str, dict[str, set[str]]] = {}
        for line, row in enumerate(table.to_dict("records"), start=2):
            image_id = row["image_id"]
            if image_id not in annotations.images:
                raise ConversionError(f"{path}, line {line}: no DICOM file for image {image_id}")
            reader = str(row[reader_column]) if reader_column else "consensus"
            if reader in excluded:
                continue
            chosen = set()
            for column, name in classes.items():
                value = row[column]
                if value not in (0, 1, 0.0, 1.0):
                    raise ConversionError(f"{path}, line {line}: column {column!r} holds {value!r}; 0 or 1 expected")
                if value == 1 and name != NO_FINDING:
                    chosen.add(name)
            by_image.setdefault(image_id, {}).setdefault(reader, set()).update(chosen)
        for image_id, by_reader in by_image.items():
            annotations.findings[image_id] = by_reader
    if found:
        annotations.label_source = " + ".join(found)
        annotations.notes.append(f"image labels from {annotations.label_source} (boxes from the annotation files)")


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


@dataclass
class ConvertOptions:
    """The choices of one ``medattn convert vindr-cxr`` run (its options, by the same names).

    Attributes:
        jobs: images converted at once (processes: pylibjpeg-openjpeg holds the GIL).
        label_policy: ``any``, ``majority`` or ``all`` (:func:`image_labels`).
        output_bits: PNG depth, 8 or 16.
        resize: output side in pixels; None keeps the original pixels.
        resize_mode: ``letterbox`` or ``square`` (:func:`~medattn.preprocess.vindr_boxes.plan_resize`).
        boxes: ``raw`` (every reader's boxes, with ``rad_id``) or ``wbf`` (fused, with agreement).
        wbf_iou: WBF's clustering IoU.
        exclude_readers: reader ids left out of labels and boxes.
        split, folds, val_fold, seed, split_files: :func:`~medattn.preprocess.vindr_targets.assign_splits`.
        yolo: also write YOLO label files.
        nnunet_dataset_id, seg_findings: also write a 2D nnU-Net dataset of these findings' box masks.
        overwrite: convert images again even when their PNG and manifest row exist.
    """

    jobs: int = 2
    label_policy: str = "any"
    output_bits: int = 8
    resize: int | None = None
    resize_mode: str = "letterbox"
    boxes: str = "raw"
    wbf_iou: float = 0.4
    exclude_readers: tuple[str, ...] = ()
    split: str = "kaggle"
    folds: int = 5
    val_fold: int = 0
    seed: int = 0
    split_files: tuple[str, ...] = ()
    yolo: bool = False
    nnunet_dataset_id: int | None = None
    seg_findings: tuple[str, ...] = ()
    overwrite: bool = False

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad value (before any file is read)."""
        from medattn.preprocess.vindr_boxes import BOX_MODES, RESIZE_MODES
        from medattn.preprocess.vindr_targets import SPLITS

        choices = {"label_policy": LABEL_POLICIES, "boxes": BOX_MODES, "resize_mode": RESIZE_MODES,
                   "split": SPLITS, "output_bits": (8, 16)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 < self.wbf_iou < 1.0:
            raise ValueError(f"--wbf-iou must be between 0 and 1, got {self.wbf_iou}")
        if (self.nnunet_dataset_id is None) != (not self.seg_findings):
            raise ValueError("--nnunet-dataset-id and --seg-findings go together")
        for name in self.seg_findings:
            if canonical_class(name, "--seg-findings") not in KAGGLE_CLASSES:
                raise ValueError(f"--seg-findings: {name!r} has no boxes; choose among {list(KAGGLE_CLASSES)}")

    @property
    def resize_text(self) -> str:
        return _resize_text(self.resize, self.resize_mode)


def _resize_text(resize: int | None, mode: str) -> str:
    """The manifest's ``resize`` column: what a resumed run compares."""
    return "none" if resize is None else f"{mode} {resize}"


MANIFEST_COLUMNS = ("image_id", "split", "path", *PixelRecord.__dataclass_fields__, "resize", "out_width",
                    "out_height", "scale_x", "scale_y", "pad_x", "pad_y", "error")
#: Rows of images finished by a run still going (or killed): what a resumed run skips.
JOURNAL = "manifest.inprogress.jsonl"


def _write_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    from medattn.data.io import atomic_write

    with atomic_write(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _finished_rows(out: Path) -> dict[str, dict]:
    """Rows of images converted by earlier runs: manifest.csv, then a killed run's journal."""
    import csv
    import json

    rows = {}
    if (out / "manifest.csv").is_file():
        with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
            rows = {row["image_id"]: row for row in csv.DictReader(handle) if not row.get("error")}
    if (out / JOURNAL).is_file():
        for line in (out / JOURNAL).read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the line a kill cut off
                continue
            rows[row["image_id"]] = {k: "" if v is None else str(v) for k, v in row.items()}
    return rows


class _Journal:
    """Appends each finished image's manifest row as one JSON line, as the image finishes."""

    def __init__(self, path: Path):
        self.path = path

    def add(self, row: dict) -> None:
        import json

        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()


@dataclass(frozen=True)
class _ImageTask:
    image_id: str
    folder: str
    path: str
    out: str
    output_bits: int
    resize: int | None
    resize_mode: str


def _convert_image(task: _ImageTask) -> dict:
    """Convert one radiograph to its PNG; its manifest row (strings, as manifest.csv reads back)."""
    from medattn.preprocess.vindr_boxes import plan_resize, resize_image

    out = Path(task.out)
    target = out / "images" / task.folder / f"{task.image_id}.png"
    array, record = read_radiograph(task.path, task.output_bits)
    geometry = plan_resize(record.width, record.height, task.resize, task.resize_mode)
    _write_png(resize_image(array, geometry), target)
    row = {"image_id": task.image_id, "split": task.folder, "path": target.relative_to(out).as_posix(),
           **record.to_dict(), "resize": _resize_text(task.resize, task.resize_mode), **geometry.record(), "error": ""}
    return {k: "" if v is None else str(v) for k, v in row.items()}


def convert_vindr_cxr(src: str | os.PathLike, out: str | os.PathLike, options: ConvertOptions | None = None,
                      **choices):
    """Convert a VinDr-CXR download (either layout) under ``out``.

    Writes, under ``out``:

    * ``images/{train,test}/{image_id}.png`` (by the DICOM's folder);
    * ``labels.csv``: ``image_id``, ``split`` (``train``/``val``/``test``), ``path`` (relative
      to ``out``), then "No finding" and Kaggle 0..13 as 0/1 columns, for the labelled
      images; ``medattn train image --task multilabel`` reads it as it is;
    * ``annotations/instances_{split}.json``: COCO, categories 0..13 by Kaggle id, boxes as
      ``[x, y, w, h]`` in output pixels (raw with ``rad_id``, or fused with ``agreement``);
      ``annotations/box_issues.csv``: every flagged box;
    * ``yolo/{split}/{image_id}.txt`` with ``yolo``; ``nnUNet_raw/DatasetXXX_VinDrCXR`` with
      ``nnunet_dataset_id``;
    * ``splits.json`` and ``manifest.csv`` (one row per image: :class:`PixelRecord`, the
      resize geometry, the error if any).

    Images whose PNG and manifest row exist with the same pixel options are skipped unless
    ``overwrite``; each finished image is journalled at once, so a killed run resumes where
    it stopped. Every file is written atomically. A file that cannot be converted is
    recorded and the run goes on.

    Args:
        src: the download (Kaggle or PhysioNet layout, detected).
        out: the output folder.
        options: a :class:`ConvertOptions`; or its fields as keywords.

    Returns:
        A :class:`medattn.preprocess.common.ConversionReport`.

    Raises:
        ConversionError: for an unknown layout or bad annotations (before any pixel).
        ValueError: for a bad option.
    """
    from medattn.data.io import check_output_folder, remove_stale_temporaries
    from medattn.preprocess.common import ConversionReport, map_cases, warn
    from medattn.preprocess.vindr_targets import read_split_files

    options = options or ConvertOptions(**choices)
    options.check()
    src, out = Path(src), check_output_folder(out, "--out")
    annotations = read_annotations(src, options.exclude_readers)
    test_ids = read_split_files(options.split_files, set(annotations.images)) if options.split_files else None
    report = ConversionReport(out)
    for note in annotations.notes:
        warn(note, report)
    out.mkdir(parents=True, exist_ok=True)
    previous = {} if options.overwrite else _finished_rows(out)
    for folder in (out, out / "images" / "train", out / "images" / "test"):
        remove_stale_temporaries(folder)
    journal = _Journal(out / JOURNAL)
    todo, done = {}, {}
    for image_id, (folder, path) in annotations.images.items():
        old = previous.get(image_id)
        if old and (out / "images" / folder / f"{image_id}.png").is_file() and old.get(
                "resize") == options.resize_text and old.get("output_bits") == str(options.output_bits):
            done[image_id] = old
        else:
            todo[image_id] = _ImageTask(image_id, folder, str(path), str(out), options.output_bits, options.resize,
                                        options.resize_mode)
    # processes: pylibjpeg-openjpeg holds the GIL while it decodes JPEG 2000
    converted, failures = map_cases(_convert_image, todo, jobs=options.jobs, desc="radiographs", processes=True,
                                    on_done=lambda _, row: journal.add(row))
    done |= converted
    rows = list(done.values()) + [{"image_id": f.case, "split": annotations.images[f.case][0], "path": "",
                                    "source": str(annotations.images[f.case][1]), "error": f.message}
                                   for f in failures]
    report.converted = sorted(done)
    report.failed = failures
    for note in _write_targets(out, annotations, done, options, test_ids):
        warn(note, report)
    _write_manifest(out, sorted(rows, key=lambda r: r["image_id"]))
    return report


def _csv_text(columns, rows) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_manifest(out: Path, rows: list[dict]) -> None:
    from medattn.data.io import write_text_atomic

    write_text_atomic(out / "manifest.csv", _csv_text(MANIFEST_COLUMNS, rows))
    (out / JOURNAL).unlink(missing_ok=True)  # the manifest now holds every finished row


def _output_boxes(annotations: Annotations, done: dict, options: ConvertOptions) -> tuple[dict, list[dict]]:
    """image_id -> boxes in output pixels (COCO dicts without ids), and the flagged boxes."""
    from medattn.preprocess.vindr_boxes import ResizeGeometry, clean_boxes, fuse_boxes

    sizes = {i: (int(row["width"]), int(row["height"])) for i, row in done.items()}
    kept, issues = clean_boxes([b for b in annotations.boxes if b["class"] in KAGGLE_CLASSES], sizes)
    by_image: dict[str, list[dict]] = {}
    for box in kept:
        by_image.setdefault(box["image_id"], []).append(box)
    if options.boxes == "wbf":
        by_image = {i: fuse_boxes(boxes, sorted(annotations.box_readers[i]), *sizes[i], iou_thr=options.wbf_iou)
                    for i, boxes in by_image.items()}
    result = {}
    for image_id, boxes in by_image.items():
        row = done[image_id]
        geometry = ResizeGeometry(*sizes[image_id], int(row["out_width"]), int(row["out_height"]),
                                  float(row["scale_x"]), float(row["scale_y"]), int(row["pad_x"]), int(row["pad_y"]))
        corners = geometry.forward([[b["x_min"], b["y_min"], b["x_max"], b["y_max"]] for b in boxes])
        result[image_id] = []
        for box, (x0, y0, x1, y1) in zip(boxes, corners.tolist()):
            extra = ({"rad_id": box["rad_id"]} if options.boxes == "raw" else
                     {"score": box["score"], "agreement": box["agreement"], "readers": box["readers"]})
            result[image_id].append({"category_id": KAGGLE_CLASSES.index(box["class"]),
                                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                     "iscrowd": 0, **extra})
    return result, issues


def _write_targets(out: Path, annotations: Annotations, done: dict, options: ConvertOptions, test_ids) -> list[str]:
    """Every output but the PNGs and the manifest; returns notes for the report."""
    from medattn.data.io import json_text, write_json_atomic, write_set_atomic, write_text_atomic
    from medattn.preprocess.vindr_targets import assign_splits, write_nnunet_dataset, yolo_lines

    labelled = sorted(i for i in done if i in annotations.findings and annotations.findings[i])
    labels = {i: image_labels(annotations.findings[i], options.label_policy) for i in labelled}
    roles, split_record = assign_splits({i: done[i]["split"] for i in done}, {i: list(v.values()) for i, v in
                                        labels.items()}, split=options.split, folds=options.folds,
                                        val_fold=options.val_fold, seed=options.seed, test_ids=test_ids)
    boxes, issues = _output_boxes(annotations, done, options)
    write_text_atomic(out / "labels.csv", _csv_text(("image_id", "split", "path", *LABEL_COLUMNS), [
        {"image_id": i, "split": roles[i], "path": done[i]["path"], **labels[i]} for i in labelled]))
    policy = {"label_policy": options.label_policy, "label_source": annotations.label_source,
              "boxes": options.boxes, "wbf_iou": options.wbf_iou if options.boxes == "wbf" else None,
              "exclude_readers": list(options.exclude_readers), "resize": options.resize_text}
    write_json_atomic(out / "splits.json", {**split_record, "policy": policy})
    coco = {f"instances_{role}.json": json_text(_coco([i for i in sorted(done) if roles[i] == role], done, boxes,
                                                      annotations, policy))
            for role in ("train", "val", "test") if any(r == role for r in roles.values())}
    issue_columns = ("image_id", "rad_id", "class", "issue", "kept", "x_min", "y_min", "x_max", "y_max")
    coco["box_issues.csv"] = _csv_text(issue_columns, issues)
    write_set_atomic(out / "annotations", coco, stale=[f"instances_{r}.json" for r in ("train", "val", "test")])
    notes = [f"{len(issues)} box(es) flagged (clipped-to-nothing, inverted or same-reader duplicates): "
             f"see annotations/box_issues.csv"] if issues else []
    if options.yolo:
        for role in ("train", "val", "test"):
            files = {f"{i}.txt": yolo_lines([(b["category_id"], b["bbox"]) for b in boxes.get(i, [])],
                                            int(done[i]["out_width"]), int(done[i]["out_height"]))
                     for i in sorted(done) if roles[i] == role}
            folder = out / "yolo" / role
            stale = [p.name for p in folder.glob("*.txt")] if folder.is_dir() else []
            if files or stale:
                write_set_atomic(folder, files, stale=stale)
        write_text_atomic(out / "yolo" / "classes.txt", "".join(f"{name}\n" for name in KAGGLE_CLASSES))
    if options.nnunet_dataset_id is not None:
        findings = [canonical_class(name, "--seg-findings") for name in options.seg_findings]
        masks = {i: [(KAGGLE_CLASSES[b["category_id"]], b["bbox"]) for b in found] for i, found in boxes.items()}
        folder = write_nnunet_dataset(out / "nnUNet_raw", options.nnunet_dataset_id, findings,
                                      {i: {**done[i], "role": roles[i]} for i in done}, masks, set(labelled))
        notes.append(f"nnU-Net dataset written: {folder}")
    return notes


def _coco(ids: list[str], done: dict, boxes: dict, annotations: Annotations, policy: dict) -> dict:
    number = {image_id: index + 1 for index, image_id in enumerate(ids)}
    images = [{"id": number[i], "file_name": done[i]["path"], "width": int(done[i]["out_width"]),
               "height": int(done[i]["out_height"]), "image_id": i} for i in ids]
    found = [{"id": 0, "image_id": number[i], **box} for i in ids for box in boxes.get(i, [])]
    for index, box in enumerate(found, start=1):
        box["id"] = index
    return {"info": {"description": "VinDr-CXR, converted by medattn", **policy, "notes": annotations.notes},
            "images": images, "annotations": found,
            "categories": [{"id": index, "name": name} for index, name in enumerate(KAGGLE_CLASSES)]}

