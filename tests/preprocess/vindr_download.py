"""Synthetic VinDr-CXR downloads (Kaggle and PhysioNet layouts) with known readers, findings
and boxes, for the tests of ``medattn convert vindr-cxr``."""

from __future__ import annotations

import csv

import numpy as np

SIZE = (48, 64)  # rows, columns


def radiograph(path, value: int, size=None) -> None:
    """A small MONOCHROME2 12-bit DX file with a window and a pixel spacing."""
    size = size or SIZE
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelSpacing = [0.15, 0.15]
    pixels = np.full(size, value, np.uint16)
    pixels[10:20, 10:30] = 4000
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


BOXES = [  # image, reader, class (as spelt in the CSV), box
    ("a", "R1", "Cardiomegaly", (10, 20, 40, 44)),
    ("a", "R2", "cardiomegaly", (12, 22, 41, 45)),
    ("a", "R3", "No finding", None),
    ("b", "R1", "No finding", None), ("b", "R2", "No finding", None), ("b", "R3", "No finding", None),
    ("c", "R4", "Nodule/Mass", (5, 5, 15, 15)),
    ("c", "R5", "Aortic enlargement", (30, 10, 50, 30)),
    ("c", "R6", "Nodule/Mass", (6, 6, 16, 16)),
    ("c", "R4", "Pleural effusion", (-5, 0, 70, 60)),  # clipped to the 64 x 48 image
    ("d", "R1", "Pleural effusion", (1, 1, 9, 9)),
]
KAGGLE_IDS = {"cardiomegaly": 3, "no finding": 14, "nodule/mass": 8, "aortic enlargement": 0,
              "pleural effusion": 10}


def make_download(root, layout: str):
    """Images a-d in train/ (d cut off), e in test/, the BOXES table as the layout spells it;
    returns the broken file."""
    for split, ids in (("train", "abcd"), ("test", "e")):
        (root / split).mkdir(parents=True)
        for index, image_id in enumerate(ids):
            radiograph(root / split / f"{image_id}.dicom", 100 * (index + 1))
    broken = root / "train" / "d.dicom"
    broken.write_bytes(broken.read_bytes()[:-2000])  # pixel data cut off
    rows = [[image_id, reader, name, *(box if box else ("",) * 4)] for image_id, reader, name, box in BOXES]
    if layout == "kaggle":
        path, header = root / "train.csv", ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
        header.insert(3, "class_id")
        rows = [r[:3] + [KAGGLE_IDS[r[2].lower()]] + r[3:] for r in rows]
    else:
        (root / "annotations").mkdir()
        path = root / "annotations" / "annotations_train.csv"
        header = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
        rows.append(["b", "R4", "Edema", "", "", "", ""])  # a PhysioNet-only finding: reported
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return broken


