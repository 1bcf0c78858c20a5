"""Dice, HD95, ASSD and volume difference of binary and label masks, and of regions.

A region (nnU-Net's region-based training) is a union of label values; it is scored on
the binary masks of the voxels holding any of its values, like a label on its own.

The surface distances follow medpy's definition (``medpy.metric.binary``): the surface
of a mask is the mask minus its erosion by the cross-shaped (connectivity 1) structuring
element; the directed distances are the Euclidean distances, in physical units, from
every surface voxel of one mask to the nearest surface voxel of the other. HD95 is the
95th percentile of both directed sets taken together, ASSD their mean.

medpy runs the erosions and distance transforms over the whole volume. Here they run on
the bounding box of both masks plus a one-voxel margin. The result is bit-identical
(tests/evaluation/test_metrics.py checks it against medpy on the full volume):

* outside the box both masks are empty, and erosion treats voxels beyond the array edge
  as background exactly as it treats the empty margin, so the surfaces are the same;
* every surface voxel lies inside the box, so every nearest-surface search finds the same
  offset vector, and scipy's distance transform computes distances from offsets only;
* boolean indexing keeps C order inside the box, so the distance arrays come out in the
  same order and their mean (pairwise summation) is the same float.

nnU-Net's ignore label (sparse annotation, see :mod:`medattn.evaluation.labels`):
:func:`label_metrics` with ``ignore_label`` removes the voxels where the ground truth holds
that value from both masks of every label and region before any metric is computed, so
Dice equals nnU-Net's ``compute_metrics(..., ignore_label=...)``, which leaves them out
of TP, FP, FN and TN. The surface metrics are medpy's HD95 and ASSD on those reduced
masks: the surface of a prediction that runs into unannotated voxels is where its
annotated part ends, and nothing about the unannotated voxels is assumed. Volumes count
the reduced masks too. Removing voxels only shrinks the masks, so the bounding box of
the full masks still holds them with its margin and the crop stays bit-identical; the
ignored voxels outside the box are outside both masks already.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from medattn.evaluation.conventions import empty_case_scores, grid_diagonal

#: Per label and case, in the order of the CSV columns.
METRIC_COLUMNS = ("dice", "hd95", "assd", "vol_pred", "vol_gt", "vol_diff", "rvd")

#: Voxels added around the joint bounding box before the distance transforms.
CROP_MARGIN = 1


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every non-zero voxel, grown by ``margin``.

    Args:
        mask: array of any shape; non-zero counts as foreground.
        margin: voxels added on each side, clipped at the array edge.

    Returns:
        One slice per axis, or None if the mask is empty.
    """
    mask = np.asarray(mask)
    box = []
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other_axes))
        if hits.size == 0:
            return None
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def union_box(
    boxes: Iterable[tuple[slice, ...] | None], shape: Sequence[int], margin: int = CROP_MARGIN
) -> tuple[slice, ...] | None:
    """Smallest box covering all ``boxes`` (None entries are skipped), grown by ``margin``."""
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return tuple(
        slice(max(min(b[axis].start for b in boxes) - margin, 0), min(max(b[axis].stop for b in boxes) + margin, n))
        for axis, n in enumerate(shape)
    )


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None, crop: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two non-empty binary masks, as medpy defines them.

    Args:
        pred: predicted mask, any dimensionality; non-zero is foreground.
        gt: ground-truth mask of the same shape.
        spacing: voxel size per array axis (e.g. ``Geometry.spacing_zyx``), or None for
            distances in voxels.
        crop: work on the joint bounding box (bit-identical, much faster); False runs on
            the whole array like medpy.

    Returns:
        ``(pred_to_gt, gt_to_pred)``: for each surface voxel of ``pred`` (C order) the
        distance to the nearest surface voxel of ``gt``, and the reverse. These are
        medpy's ``__surface_distances(pred, gt)`` and ``__surface_distances(gt, pred)``.

    Raises:
        ValueError: if the shapes differ, the spacing has the wrong length, or a mask is empty.
    """
    from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    sampling = _sampling(spacing, pred.ndim)
    if crop:
        box = union_box([bounding_box(pred), bounding_box(gt)], pred.shape)
        if box is not None:
            pred, gt = pred[box], gt[box]
    if not pred.any() or not gt.any():
        raise ValueError(
            f"surface distances need two non-empty masks (prediction has {int(pred.sum())} voxels, "
            f"ground truth {int(gt.sum())})"
        )
    footprint = generate_binary_structure(pred.ndim, 1)
    pred_surface = pred ^ binary_erosion(pred, structure=footprint, iterations=1)
    gt_surface = gt ^ binary_erosion(gt, structure=footprint, iterations=1)
    # The transform measures the distance to the nearest zero, hence the inverted surfaces.
    pred_to_gt = distance_transform_edt(~gt_surface, sampling=sampling)[pred_surface]
    gt_to_pred = distance_transform_edt(~pred_surface, sampling=sampling)[gt_surface]
    return pred_to_gt, gt_to_pred


def hd95_from_distances(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray) -> float:
    """95th percentile of both directed distance sets together (medpy's ``hd95``)."""
    return float(np.percentile(np.hstack((pred_to_gt, gt_to_pred)), 95))


def assd_from_distances(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray) -> float:
    """Mean of both directed distance sets together (medpy's ``assd``)."""
    return float(np.concatenate([pred_to_gt, gt_to_pred]).mean())


def binary_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None = None,
    convention: str = "nnunet",
    crop: bool = True,
) -> dict[str, float]:
    """Dice, HD95, ASSD and volumes of one pair of binary masks.

    Args:
        pred: predicted mask; non-zero is foreground.
        gt: ground-truth mask of the same shape.
        spacing: voxel size per array axis in mm, or None to measure in voxels.
        convention: empty-mask convention, see :mod:`medattn.evaluation.conventions`.
        crop: see :func:`surface_distances`.

    Returns:
        A dict with the keys of :data:`METRIC_COLUMNS`. Volumes are in mm³ (voxels without
        spacing); ``vol_diff`` is prediction minus ground truth and ``rvd`` is
        ``vol_diff / vol_gt`` (NaN for an empty ground truth).

    Raises:
        ValueError: if the shapes or the spacing do not fit, or the convention is unknown.
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    sampling = _sampling(spacing, pred.ndim)
    voxel_volume = float(np.prod(sampling)) if sampling is not None else 1.0
    diagonal = grid_diagonal(pred.shape, sampling)
    if crop:
        box = union_box([bounding_box(pred), bounding_box(gt)], pred.shape)
        if box is not None:
            pred, gt = pred[box], gt[box]
    return _metrics_of_crop(pred, gt, sampling, convention, voxel_volume, diagonal)


def label_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    labels: Sequence[int | Sequence[int]],
    spacing: Sequence[float] | None = None,
    convention: str = "nnunet",
    pred_boxes: Sequence[tuple[slice, ...] | None] | None = None,
    gt_boxes: Sequence[tuple[slice, ...] | None] | None = None,
    ignore_label: int | None = None,
) -> dict[int | tuple[int, ...], dict[str, float]]:
    """:func:`binary_metrics` of every label or region in two integer label maps, in one pass.

    A label ``k`` is scored on the masks ``image == k``; a region, a tuple of label values
    as in nnU-Net's ``labels_or_regions``, on the masks ``np.isin(image, region)``. The
    bounding box of every label comes from one ``scipy.ndimage.find_objects`` pass per
    image, a region's box is the union of its labels' boxes, so no full-volume mask is
    ever built per label or region.

    With ``ignore_label``, the voxels where ``gt == ignore_label`` are removed from both
    masks first (nnU-Net's ignore label): Dice, HD95, ASSD and the volumes are those of
    the masks ``(image == k) & (gt != ignore_label)``. Dice then equals nnU-Net's
    ``compute_metrics`` with the same ``ignore_label``; HD95 and ASSD are medpy's on the
    reduced masks.

    Args:
        pred: predicted labels, non-negative integers.
        gt: ground-truth labels, same shape.
        labels: the label values (> 0) and regions (tuples of label values > 0) to score;
            absent ones follow the convention.
        spacing: voxel size per array axis in mm, or None to measure in voxels.
        convention: empty-mask convention.
        pred_boxes: ``find_objects(pred)`` if already computed (entry ``k - 1`` is the
            box of label ``k``); computed here when None.
        gt_boxes: the same for ``gt``.
        ignore_label: the value marking unannotated ground-truth voxels, or None. Its
            voxels in ``pred`` are not checked here (the caller decides whether a
            prediction may hold it).

    Returns:
        ``{label or region: metrics}`` with the keys of :data:`METRIC_COLUMNS`; a label's
        key is an ``int``, a region's the tuple of its values as given.

    Raises:
        ValueError: if the arrays are not integer, negative, or of different shapes, a
            label or region value is not > 0, or the ignore label is not an integer > 0
            or is one of the scored values.
    """
    from scipy.ndimage import find_objects

    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    for name, array in (("prediction", pred), ("ground truth", gt)):
        if array.dtype.kind not in "biu":
            raise ValueError(f"{name} labels must be integers, got dtype {array.dtype}")
    entries = [_label_or_region(entry) for entry in labels]
    _check_ignore_label(ignore_label, entries)
    sampling = _sampling(spacing, pred.ndim)
    voxel_volume = float(np.prod(sampling)) if sampling is not None else 1.0
    diagonal = grid_diagonal(pred.shape, sampling)
    top = max((max(_values_of(entry)) for entry in entries), default=0)
    if pred_boxes is None:
        pred_boxes = find_objects(_as_find_objects_input(pred), max_label=top) if top else []
    if gt_boxes is None:
        gt_boxes = find_objects(_as_find_objects_input(gt), max_label=top) if top else []
    results = {}
    for entry in entries:
        values = _values_of(entry)
        box = union_box([_box_of(boxes, k) for boxes in (pred_boxes, gt_boxes) for k in values], pred.shape)
        if box is None:
            pred_crop = gt_crop = np.zeros((0,) * pred.ndim, dtype=bool)
        else:
            pred_crop, gt_crop = _mask_of(pred[box], values), _mask_of(gt[box], values)
            if ignore_label is not None:
                # The ground-truth mask holds no ignored voxel (the ignore value is not
                # scored); the prediction's are dropped. Both masks only shrink, so the
                # box of the full masks still holds them (see the module docstring).
                pred_crop &= gt[box] != ignore_label
        results[entry] = _metrics_of_crop(pred_crop, gt_crop, sampling, convention, voxel_volume, diagonal)
    return results


def _label_or_region(entry) -> int | tuple[int, ...]:
    """``entry`` as an ``int`` label or a tuple-of-ints region, checked to be > 0."""
    if np.ndim(entry) == 0:
        label = int(entry)
        if label <= 0:
            raise ValueError(f"label values to score must be > 0, got {label}")
        return label
    region = tuple(int(k) for k in entry)
    if not region or any(k <= 0 for k in region):
        raise ValueError(f"a region to score needs label values > 0, got {region}")
    return region


def _check_ignore_label(ignore_label, entries) -> None:
    if ignore_label is None:
        return
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, (int, np.integer)) or ignore_label <= 0:
        raise ValueError(f"the ignore label must be an integer > 0, got {ignore_label!r}")
    scored = [entry for entry in entries if ignore_label in _values_of(entry)]
    if scored:
        raise ValueError(f"the ignore label {ignore_label} is never scored, but {scored[0]} holds it")


def _values_of(entry: int | tuple[int, ...]) -> tuple[int, ...]:
    return entry if isinstance(entry, tuple) else (entry,)


def _mask_of(labels: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    # A plain comparison for one value: single labels cost what they did before regions.
    return labels == values[0] if len(values) == 1 else np.isin(labels, values)


def _metrics_of_crop(pred, gt, sampling, convention, voxel_volume, diagonal) -> dict[str, float]:
    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    vol_pred, vol_gt = n_pred * voxel_volume, n_gt * voxel_volume
    volumes = {
        "vol_pred": vol_pred,
        "vol_gt": vol_gt,
        "vol_diff": vol_pred - vol_gt,
        "rvd": (vol_pred - vol_gt) / vol_gt if n_gt else float("nan"),
    }
    if n_pred == 0 or n_gt == 0:
        scores = empty_case_scores(convention, n_pred == 0, n_gt == 0, diagonal)
        return {"dice": scores.dice, "hd95": scores.hd95, "assd": scores.assd, **volumes}
    intersection = int(np.count_nonzero(pred & gt))
    # Same expression as medpy.metric.binary.dc, so the float is identical.
    dice = 2.0 * intersection / float(n_pred + n_gt)
    pred_to_gt, gt_to_pred = surface_distances(pred, gt, sampling, crop=False)
    return {
        "dice": dice,
        "hd95": hd95_from_distances(pred_to_gt, gt_to_pred),
        "assd": assd_from_distances(pred_to_gt, gt_to_pred),
        **volumes,
    }


def _box_of(boxes, label: int):
    return boxes[label - 1] if label - 1 < len(boxes) else None


def _as_find_objects_input(array: np.ndarray) -> np.ndarray:
    # find_objects takes integer arrays; booleans become 0/1.
    return array.view(np.uint8) if array.dtype == bool else array


def _sampling(spacing, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    values = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=float)))
    if len(values) == 1 and ndim != 1:
        values = values * ndim
    if len(values) != ndim:
        raise ValueError(f"spacing {values} has {len(values)} values for a {ndim}-D image")
    if not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing {values} must be finite and positive")
    return values
