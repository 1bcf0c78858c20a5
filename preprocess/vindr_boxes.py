"""VinDr-CXR boxes: resizing geometry, cleaning, the reader policy and weighted box fusion.

Part of ``medattn convert vindr-cxr`` (:mod:`medattn.preprocess.vindr_cxr`).

* **Geometry** (:class:`ResizeGeometry`): no resize, ``square`` (each axis scaled on its own,
  aspect distorted, as the SNA paper's 224 x 224) or ``letterbox`` (one scale, the image
  centred and padded with 0). The scale is chosen so the resized image has whole pixels,
  and each image's ``scale_x``, ``scale_y``, ``pad_x``, ``pad_y`` go into the manifest, so
  :func:`to_original` maps output-pixel boxes back to the DICOM grid exactly (submissions
  and PhysioNet's test labels use original pixels). x always pairs with the width and y
  with the height.
* **Cleaning** (:func:`clean_boxes`): boxes are clipped to the image; an inverted box
  (``x_min > x_max``) is flagged and its corners swapped; a box of zero area after
  clipping is flagged and dropped; a box repeating one already drawn by the same reader for
  the same class at IoU >= 0.9 is flagged and dropped (readers sometimes drew near-copies).
  Every flag is a row of ``annotations/box_issues.csv``.
* **Fusion** (:func:`fuse_boxes`): ``ensemble_boxes.weighted_boxes_fusion`` with each
  reader as a separate model, on coordinates normalised to [0, 1] (given pixels it clips
  them to 1 and drops them silently). WBF's score is the readers' mean confidence scaled
  by how many boxes joined, which counts a reader twice when two of its boxes join one
  cluster; so each fused box also carries ``agreement``: the share of the image's readers
  (those who said "No finding" included) with a box of that class overlapping it at IoU
  >= ``iou_thr``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medattn.preprocess.common import ConversionError

__all__ = ["BOX_MODES", "RESIZE_MODES", "ResizeGeometry", "clean_boxes", "fuse_boxes", "iou", "plan_resize",
           "read_manifest", "resize_image", "to_original"]

RESIZE_MODES = ("square", "letterbox")
BOX_MODES = ("raw", "wbf")
#: Same reader, same class, at least this IoU: a near-copy.
DUPLICATE_IOU = 0.9


@dataclass(frozen=True)
class ResizeGeometry:
    """How one image's pixels map to the output: ``x_out = x * scale_x + pad_x`` (y alike)."""

    width: int
    height: int
    out_width: int
    out_height: int
    scale_x: float = 1.0
    scale_y: float = 1.0
    pad_x: int = 0
    pad_y: int = 0

    def forward(self, boxes) -> np.ndarray:
        """(N, 4) ``x_min, y_min, x_max, y_max`` from original to output pixels."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return boxes * [self.scale_x, self.scale_y, self.scale_x, self.scale_y] + [self.pad_x, self.pad_y] * 2

    def inverse(self, boxes) -> np.ndarray:
        """(N, 4) boxes from output back to original pixels, clipped to the original image."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        original = (boxes - [self.pad_x, self.pad_y] * 2) / [self.scale_x, self.scale_y, self.scale_x, self.scale_y]
        return np.clip(original, 0, [self.width, self.height, self.width, self.height])

    def record(self) -> dict:
        """The manifest columns."""
        return {"out_width": self.out_width, "out_height": self.out_height, "scale_x": self.scale_x,
                "scale_y": self.scale_y, "pad_x": self.pad_x, "pad_y": self.pad_y}


def plan_resize(width: int, height: int, size: int | None = None, mode: str = "letterbox") -> ResizeGeometry:
    """The geometry that fits a ``width`` x ``height`` image into ``size`` x ``size``.

    Args:
        width, height: the original image (DICOM Columns, Rows).
        size: the output side; None keeps the original pixels.
        mode: ``letterbox`` (keep the aspect, pad centred) or ``square`` (stretch).

    Raises:
        ValueError: for an unknown mode or a size below 1.
    """
    if size is None:
        return ResizeGeometry(width, height, width, height)
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose one of {list(RESIZE_MODES)}")
    if size < 1:
        raise ValueError(f"resize size must be at least 1, got {size}")
    if mode == "square":
        return ResizeGeometry(width, height, size, size, size / width, size / height)
    scale = size / max(width, height)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    # the scales of the whole-pixel image actually written, so boxes land on its pixels
    return ResizeGeometry(width, height, size, size, new_width / width, new_height / height,
                          (size - new_width) // 2, (size - new_height) // 2)


def resize_image(array: np.ndarray, geometry: ResizeGeometry) -> np.ndarray:
    """``array`` (rows, columns; uint8 or uint16) resized by ``geometry`` with Lanczos, padded with 0."""
    from PIL import Image

    if (geometry.out_width, geometry.out_height) == (geometry.width, geometry.height):
        return array
    new_width = round(geometry.width * geometry.scale_x)
    new_height = round(geometry.height * geometry.scale_y)
    # mode "F" resizes 8- and 16-bit data alike (Pillow's I;16 has no Lanczos)
    resized = np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize(
        (new_width, new_height), Image.Resampling.LANCZOS))
    top = np.iinfo(array.dtype).max
    out = np.zeros((geometry.out_height, geometry.out_width), dtype=array.dtype)
    out[geometry.pad_y:geometry.pad_y + new_height, geometry.pad_x:geometry.pad_x + new_width] = np.clip(
        np.rint(resized), 0, top)
    return out


def read_manifest(path: str | os.PathLike) -> dict[str, ResizeGeometry]:
    """image_id -> geometry, from the ``manifest.csv`` of a conversion (converted images only)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no manifest.csv (written by medattn convert vindr-cxr)")
    geometries = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("error") or not row.get("out_width"):
                continue
            geometries[row["image_id"]] = ResizeGeometry(
                int(row["width"]), int(row["height"]), int(row["out_width"]), int(row["out_height"]),
                float(row["scale_x"]), float(row["scale_y"]), int(row["pad_x"]), int(row["pad_y"]))
    return geometries


def to_original(boxes, image_id: str, manifest) -> np.ndarray:
    """Boxes predicted on a converted image, in the original DICOM pixels.

    Args:
        boxes: (N, 4) ``x_min, y_min, x_max, y_max`` in output pixels.
        image_id: the image (its manifest row).
        manifest: the path of ``manifest.csv``, or :func:`read_manifest`'s mapping (faster
            for many images).

    Returns:
        (N, 4) float64 boxes on the original grid, clipped to the image.

    Raises:
        ConversionError: when the manifest has no converted image ``image_id``.
    """
    geometries = manifest if isinstance(manifest, dict) else read_manifest(manifest)
    if image_id not in geometries:
        raise ConversionError(f"image {image_id!r} is not a converted image of the manifest")
    return geometries[image_id].inverse(boxes)


# ----------------------------------------------------------------------------- cleaning and fusion


def iou(box, others) -> np.ndarray:
    """IoU of one ``x_min, y_min, x_max, y_max`` box with each row of ``others`` (N, 4)."""
    others = np.asarray(others, dtype=np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / (area + areas - inter), 0.0)


def clean_boxes(boxes: list[dict], sizes: dict[str, tuple[int, int]]) -> tuple[list[dict], list[dict]]:
    """Clip, repair, drop zero-area boxes and same-reader near-copies (module docstring).

    Args:
        boxes: dicts with ``image_id``, ``rad_id``, ``class``, ``x_min`` ... ``y_max``
            (original pixels), in the annotation file's order (the first of two copies stays).
        sizes: image_id -> (width, height); images missing here (not converted) are skipped.

    Returns:
        The kept boxes (clipped copies) and the issues: dicts of the box with ``issue``
        (``inverted``, ``zero area``, ``duplicate``) and ``kept`` (whether the box stayed).
    """
    kept, issues = [], []
    drawn: dict[tuple, list[np.ndarray]] = {}
    for box in boxes:
        if box["image_id"] not in sizes:
            continue
        width, height = sizes[box["image_id"]]
        x0, y0, x1, y1 = box["x_min"], box["y_min"], box["x_max"], box["y_max"]
        if x0 > x1 or y0 > y1:
            issues.append({**box, "issue": "inverted", "kept": True})
            x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        x0, x1 = float(np.clip(x0, 0, width)), float(np.clip(x1, 0, width))
        y0, y1 = float(np.clip(y0, 0, height)), float(np.clip(y1, 0, height))
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            issues.append({**box, "issue": "zero area", "kept": False})
            continue
        corners = np.array([x0, y0, x1, y1])
        same = drawn.setdefault((box["image_id"], box["rad_id"], box["class"]), [])
        if same and iou(corners, np.stack(same)).max() >= DUPLICATE_IOU:
            issues.append({**box, "issue": "duplicate", "kept": False})
            continue
        same.append(corners)
        kept.append({**box, "x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1})
    return kept, issues


def fuse_boxes(boxes: list[dict], readers: list[str], width: int, height: int, iou_thr: float = 0.4) -> list[dict]:
    """Weighted boxes fusion of one image's boxes, each reader a separate model.

    Args:
        boxes: the image's cleaned boxes (dicts as in :func:`clean_boxes`).
        readers: every reader of the image, those without boxes included (the agreement's
            denominator).
        width, height: the image size (for normalising).
        iou_thr: WBF's clustering IoU, also the overlap that counts a reader as agreeing.

    Returns:
        Fused boxes: dicts with ``class``, ``x_min`` ... ``y_max`` (original pixels),
        ``score`` (WBF's) and ``agreement`` (share of readers), ``readers`` (their ids).
    """
    from ensemble_boxes import weighted_boxes_fusion

    from medattn.preprocess.vindr_cxr import KAGGLE_CLASSES

    if not boxes:
        return []
    if not readers or any(b["rad_id"] not in readers for b in boxes):
        raise ValueError(f"every box's reader must be among the image's readers {readers}")
    scale = np.array([width, height, width, height], dtype=np.float64)
    per_reader = [[b for b in boxes if b["rad_id"] == reader] for reader in readers]
    # ensemble_boxes calls exit() on ragged inputs; these lists are built to match
    fused, scores, labels = weighted_boxes_fusion(
        [np.array([[b["x_min"], b["y_min"], b["x_max"], b["y_max"]] for b in own]).reshape(-1, 4) / scale
         for own in per_reader],
        [np.ones(len(own)) for own in per_reader],
        [np.array([KAGGLE_CLASSES.index(b["class"]) for b in own], dtype=np.int64) for own in per_reader],
        weights=[1.0] * len(readers), iou_thr=iou_thr, skip_box_thr=0.0)
    out = []
    for corners, score, label in zip(np.asarray(fused) * scale, scores, labels):
        name = KAGGLE_CLASSES[int(label)]
        agreeing = sorted({b["rad_id"] for b in boxes if b["class"] == name and iou(
            corners, [[b["x_min"], b["y_min"], b["x_max"], b["y_max"]]])[0] >= iou_thr})
        out.append({"class": name, "x_min": float(corners[0]), "y_min": float(corners[1]),
                    "x_max": float(corners[2]), "y_max": float(corners[3]), "score": float(score),
                    "agreement": len(agreeing) / len(readers), "readers": agreeing})
    return sorted(out, key=lambda b: (KAGGLE_CLASSES.index(b["class"]), b["x_min"], b["y_min"]))
