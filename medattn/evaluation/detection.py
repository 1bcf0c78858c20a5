"""Box detection scores for the SNA paper's VinDr-CXR task (``medattn evaluate detection``).

Two numbers that the SNA code conflates, both reported and each named for what it is:

* **AP at IoU 0.4**, the competition's metric (PASCAL VOC 2010+ style): per class, the
  detections of every image sorted by score; each takes the ground-truth box of that image
  and class it overlaps most; it is a true positive when that IoU is > 0.4 and the box is
  not yet taken, else a false positive (a second hit on one box is a duplicate). AP is the
  area under the precision envelope over all recall points (``interpolation="voc"``), or
  the mean over 101 recall points (``"coco101"``, pycocotools' convention; the tests check
  it against pycocotools). A class without ground-truth boxes has no AP (NaN, left out of
  the mean).
* **Hit rate at IoU > 0.4**, the SNA code's "AP": a ground-truth box is hit when *any*
  same-class detection of its image, among those scoring at least ``score_threshold``
  (torchvision's 0.05) and within the image's top ``max_detections`` (100), overlaps it at
  IoU > 0.4. Per class, hits over boxes; "total" pools every box. It is a recall: it sees
  neither false positives nor ranking.

Kaggle scores "No finding" as a 15th class: a 1 x 1 box ``[0, 0, 1, 1]`` on each image
without findings, predicted as ``14 1 0 0 1 1``. ``no_finding=True`` adds that class: the
box on every ground-truth image without boxes, and predictions of category 14 as given.

Inputs are COCO: the ground truth an ``instances_*.json`` of ``medattn convert
vindr-cxr`` (or any COCO file), the predictions a COCO results list of ``{"image_id",
"category_id", "bbox": [x, y, w, h], "score"}``; ``image_id`` is the COCO id or the
VinDr image id (the images' ``image_id`` field).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DetectionError", "DetectionReport", "average_precision", "evaluate_detection", "hit_rate"]

NO_FINDING_ID = 14
INTERPOLATIONS = ("voc", "coco101")


class DetectionError(ValueError):
    """Bad ground truth or predictions; the message names the file and the entry."""


@dataclass
class DetectionReport:
    """Per-class AP and hit rate, and their means."""

    iou_threshold: float
    interpolation: str
    classes: list[dict] = field(default_factory=list)  # id, name, gt_boxes, detections, ap, hits, hit_rate
    mean_ap: float = math.nan
    hit_rate_total: float = math.nan

    def summary(self) -> dict:
        return {"iou_threshold": self.iou_threshold, "interpolation": self.interpolation, "mean_ap": self.mean_ap,
                "hit_rate_total": self.hit_rate_total, "classes": self.classes,
                "note": "ap is VOC-style average precision; hit_rate is the SNA code's 'AP at IoU > 0.4', a recall"}


def _iou_matrix(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of every ``[x, y, w, h]`` row of ``boxes`` with every row of ``others``."""
    a = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)[:, None, :]
    b = np.concatenate([others[:, :2], others[:, :2] + others[:, 2:]], axis=1)[None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    union = (boxes[:, 2] * boxes[:, 3])[:, None] + (others[:, 2] * others[:, 3])[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _envelope_ap(recall: np.ndarray, precision: np.ndarray, interpolation: str) -> float:
    envelope = np.maximum.accumulate(np.concatenate([precision, [0.0]])[::-1])[::-1]
    if interpolation == "coco101":
        points = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
        return float(np.where(points < len(precision), envelope[np.minimum(points, len(precision))], 0.0).mean())
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float((steps * envelope[:-1]).sum())


def average_precision(detections: list[tuple], truths: dict, iou_threshold: float = 0.4,
                      interpolation: str = "voc") -> float:
    """AP of one class.

    Args:
        detections: ``(image, score, [x, y, w, h])`` of the class.
        truths: image -> (N, 4) ground-truth ``[x, y, w, h]`` of the class.
        iou_threshold: a detection matches at IoU strictly above it.
        interpolation: ``voc`` (all points) or ``coco101``.

    Returns:
        The AP, or NaN when the class has no ground-truth box.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose one of {list(INTERPOLATIONS)}")
    positives = sum(len(boxes) for boxes in truths.values())
    if positives == 0:
        return math.nan
    order = sorted(range(len(detections)), key=lambda k: -detections[k][1])  # stable for equal scores
    taken = {image: np.zeros(len(boxes), bool) for image, boxes in truths.items()}
    hits = np.zeros(len(order))
    for rank, k in enumerate(order):
        image, _, box = detections[k]
        boxes = truths.get(image)
        if boxes is None or not len(boxes):
            continue
        overlaps = _iou_matrix(np.asarray([box], float), boxes)[0]
        best = int(overlaps.argmax())
        if overlaps[best] > iou_threshold and not taken[image][best]:
            taken[image][best] = True
            hits[rank] = 1
    true_positives = np.cumsum(hits)
    recall = true_positives / positives
    precision = true_positives / np.arange(1, len(order) + 1)
    return _envelope_ap(recall, precision, interpolation) if len(order) else 0.0


def hit_rate(detections: list[tuple], truths: dict, iou_threshold: float = 0.4) -> tuple[int, int]:
    """The SNA code's hits of one class: (ground-truth boxes hit, ground-truth boxes)."""
    by_image: dict = {}
    for image, _, box in detections:
        by_image.setdefault(image, []).append(box)
    hits = total = 0
    for image, boxes in truths.items():
        total += len(boxes)
        found = by_image.get(image)
        if found and len(boxes):
            hits += int((_iou_matrix(boxes, np.asarray(found, float)) > iou_threshold).any(axis=1).sum())
    return hits, total


def _load_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DetectionError(f"{path}: {what} not found") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DetectionError(f"{path}: not a readable JSON {what} ({err})") from err


def _box(value, where: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise DetectionError(f"{where}: bbox must be [x, y, w, h], got {value!r}")
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError) as err:
        raise DetectionError(f"{where}: bbox must hold numbers, got {value!r}") from err
    if not all(math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0:
        raise DetectionError(f"{where}: bbox must be finite with width and height >= 0, got {value!r}")
    return box


def _ground_truth(path: Path, no_finding: bool):
    data = _load_json(path, "COCO ground truth")
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise DetectionError(f"{path}: not a COCO file (needs images, annotations and categories)")
    names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    ids = {int(image["id"]) for image in data["images"]}
    aliases = {str(image["image_id"]): int(image["id"]) for image in data["images"] if "image_id" in image}
    truths: dict[int, dict[int, list]] = {c: {} for c in names}
    boxed = set()
    for index, ann in enumerate(data["annotations"]):
        where = f"{path}, annotations[{index}]"
        if int(ann["category_id"]) not in names or int(ann["image_id"]) not in ids:
            raise DetectionError(f"{where}: unknown category {ann['category_id']} or image {ann['image_id']}")
        truths[int(ann["category_id"])].setdefault(int(ann["image_id"]), []).append(_box(ann["bbox"], where))
        boxed.add(int(ann["image_id"]))
    if no_finding:
        names.setdefault(NO_FINDING_ID, "No finding")
        truths[NO_FINDING_ID] = {image: [[0.0, 0.0, 1.0, 1.0]] for image in ids - boxed}
    return names, ids, aliases, {c: {i: np.asarray(b, float) for i, b in by.items()} for c, by in truths.items()}


def _predictions(path: Path, names: dict, ids: set, aliases: dict) -> dict[int, list[tuple]]:
    data = _load_json(path, "COCO results list")
    if not isinstance(data, list):
        raise DetectionError(f"{path}: a COCO results file is a list of detections, got {type(data).__name__}")
    found: dict[int, list[tuple]] = {c: [] for c in names}
    for index, det in enumerate(data):
        where = f"{path}, entry {index}"
        if not isinstance(det, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(det):
            raise DetectionError(f"{where}: a detection needs image_id, category_id, bbox and score")
        image = det["image_id"]
        image = aliases.get(image, image) if isinstance(image, str) else image
        if image not in ids:
            raise DetectionError(f"{where}: image {det['image_id']!r} is not in the ground truth")
        if det["category_id"] not in names:
            raise DetectionError(f"{where}: unknown category {det['category_id']!r}; known: {sorted(names)}")
        score = float(det["score"])
        if not math.isfinite(score):
            raise DetectionError(f"{where}: score is {det['score']!r}")
        found[int(det["category_id"])].append((image, score, _box(det["bbox"], where)))
    return found


def _top_per_image(detections: list[tuple], score_threshold: float, max_detections: int, per_image: dict) -> list:
    """Detections kept by a detector's output rule: score >= threshold and the image's top N (all classes)."""
    return [d for d in detections if d[1] >= score_threshold and (d[0], d[1], tuple(d[2])) in per_image[d[0]]]


def evaluate_detection(pred: str | os.PathLike, gt: str | os.PathLike, *, iou_threshold: float = 0.4,
                       interpolation: str = "voc", no_finding: bool = False, score_threshold: float = 0.05,
                       max_detections: int = 100) -> DetectionReport:
    """Per-class AP and SNA hit rate of a COCO results file against a COCO ground truth.

    Args:
        pred: the COCO results list.
        gt: the COCO ground truth (``annotations/instances_test.json``).
        iou_threshold: matches need IoU strictly above it (0.4, the competition's).
        interpolation: ``voc`` or ``coco101`` (module docstring).
        no_finding: add Kaggle's "No finding" class (module docstring).
        score_threshold, max_detections: the hit rate's detector output rule.

    Raises:
        DetectionError: naming the file and entry of bad input.
    """
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    names, ids, aliases, truths = _ground_truth(Path(gt), no_finding)
    found = _predictions(Path(pred), names, ids, aliases)
    per_image: dict[int, set] = {image: set() for image in ids}
    everything = sorted((d for dets in found.values() for d in dets), key=lambda d: -d[1])
    for image, score, box in everything:
        if len(per_image[image]) < max_detections:
            per_image[image].add((image, score, tuple(box)))
    report = DetectionReport(iou_threshold, interpolation)
    pooled_hits = pooled_total = 0
    for class_id in sorted(names):
        ap = average_precision(found[class_id], truths[class_id], iou_threshold, interpolation)
        kept = _top_per_image(found[class_id], score_threshold, max_detections, per_image)
        hits, total = hit_rate(kept, truths[class_id], iou_threshold)
        pooled_hits, pooled_total = pooled_hits + hits, pooled_total + total
        report.classes.append({"id": class_id, "name": names[class_id], "gt_boxes": total,
                               "detections": len(found[class_id]), "ap": ap, "hits": hits,
                               "hit_rate": hits / total if total else math.nan})
    scored = [c["ap"] for c in report.classes if not math.isnan(c["ap"])]
    report.mean_ap = float(np.mean(scored)) if scored else math.nan
    report.hit_rate_total = pooled_hits / pooled_total if pooled_total else math.nan
    return report
