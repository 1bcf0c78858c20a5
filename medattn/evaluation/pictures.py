"""Case pictures of an evaluation: the best, median and worst case of every class.

For each scored class (a label, or a region of several values) the cases with a defined
Dice are ranked; the best, the median (the lower one of an even count) and the worst are
drawn, each once per class even when they coincide. A picture is one slice through the
structure: the axial slice (first array axis of SimpleITK's (z, y, x)) where the ground
truth has the largest area, or the prediction where the ground truth is empty. Panels side
by side: the ground-truth contour, then the prediction's (A), then the compared one's (B)
when the evaluation compared two folders. With ``images`` (a folder holding ``CASE.nii.gz``
or nnU-Net's ``CASE_0000.nii.gz``) the contours lie on the intensity slice (windowed to
its 1st-99th percentile); without it, on a blank background. Pixels keep the physical
aspect ratio of the slice (from the spacing).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CasePicture", "case_pictures", "chosen_cases"]

_TRUTH, _A, _B = "#2ca02c", "#d62728", "#1f77b4"


@dataclass(frozen=True)
class CasePicture:
    """One drawn case: the class, which rank(s) it stands for, the case and the PNG."""

    class_name: str
    ranks: tuple[str, ...]
    case: str
    dice: tuple[float, ...]
    png: bytes


def chosen_cases(metrics, label) -> list[tuple[tuple[str, ...], str]]:
    """``[(ranks, case)]``: the best, median and worst case of ``label`` by Dice.

    Cases with an undefined Dice are left out; a case standing for several ranks (one or
    two cases) appears once with all of them.
    """
    rows = metrics[(metrics["label"].astype(str) == str(label)) & np.isfinite(metrics["dice"].astype(float))]
    if rows.empty:
        return []
    ordered = rows.sort_values(["dice", "case"], ascending=[False, True])["case"].tolist()
    picks = {"best": ordered[0], "median": ordered[len(ordered) // 2], "worst": ordered[-1]}
    found: dict[str, list[str]] = {}
    for rank, case in picks.items():
        found.setdefault(case, []).append(rank)
    return [(tuple(ranks), case) for case, ranks in found.items()]


def _files(folder) -> dict[str, Path]:
    from medattn.data.io import case_name, list_images

    return {case_name(path): path for path in list_images(folder)} if folder else {}


def _image_file(images: dict[str, Path], case: str) -> Path | None:
    return images.get(case) or images.get(f"{case}_0000")


def _mask(labels: np.ndarray, label) -> np.ndarray:
    values = [int(v) for v in str(label).split("+")]
    return np.isin(labels, values)


def _slice_index(truth: np.ndarray, prediction: np.ndarray) -> int:
    """The axial index with the largest ground-truth area (else prediction area, else the middle)."""
    for mask in (truth, prediction):
        areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
        if areas.any():
            return int(areas.argmax())
    return truth.shape[0] // 2


def case_pictures(result, images=None, dpi: int = 72) -> list[CasePicture]:
    """Draw the best, median and worst case of every class of an ``EvaluationResult``.

    Args:
        result: the evaluation (its summary names the prediction, ground-truth and
            compared folders).
        images: folder of intensity images, or None for contours only.
        dpi: resolution of the PNGs.

    Returns:
        The pictures, class by class in report order.
    """
    from medattn.data.io import read_image

    summary = result.summary
    folders = [_files(summary["gt_dir"]), _files(summary["pred_dir"])]
    tables = [result.metrics]
    if result.compare_metrics is not None:
        folders.append(_files(summary["compare"]["pred_dir"]))
        tables.append(result.compare_metrics)
    image_files = _files(images)
    cache: dict[tuple[int, str], tuple[np.ndarray, object]] = {}

    def read(index: int, case: str):
        key = (index, case)
        if key not in cache:
            path = folders[index].get(case) if index >= 0 else _image_file(image_files, case)
            cache[key] = read_image(path) if path is not None else (None, None)
        return cache[key]

    pictures = []
    for label, name in summary["labels"].items():
        for ranks, case in chosen_cases(result.metrics, label):
            truth, geometry = read(0, case)
            predictions = [read(i, case)[0] for i in range(1, len(folders))]
            if truth is None or any(p is None or p.shape != truth.shape for p in predictions):
                continue  # a missing prediction scored as empty has no file to draw
            image = read(-1, case)[0]
            if image is not None and image.shape != truth.shape:
                image = None  # an image on another grid (or with channels) is not drawn under the contours
            dice = tuple(float(t.loc[(t["case"] == case) & (t["label"].astype(str) == str(label)), "dice"].iloc[0])
                         for t in tables)
            png = _draw(truth, predictions, image, geometry, label, name, ranks, case, dice, dpi)
            pictures.append(CasePicture(name, ranks, case, dice, png))
    return pictures


def _draw(truth, predictions, image, geometry, label, name, ranks, case, dice, dpi) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    masks = [_mask(truth, label)] + [_mask(p, label) for p in predictions]
    spacing = list(geometry.spacing) if geometry is not None else [1.0] * truth.ndim
    if truth.ndim == 3:
        index = _slice_index(masks[0], masks[1])
        masks = [m[index] for m in masks]
        background = image[index] if image is not None else None
        aspect = spacing[1] / spacing[0]  # rows are y, columns x; SimpleITK spacing is (x, y, z)
        where = f"axial slice {index}"
    else:
        background = image
        aspect = spacing[1] / spacing[0] if len(spacing) > 1 else 1.0
        where = "image"
    titles = ["ground truth"] + [f"A: Dice {dice[0]:.3f}"] + ([f"B: Dice {dice[1]:.3f}"] if len(dice) > 1 else [])
    colours = [_TRUTH, _A, _B]
    rows, cols = masks[0].shape
    width = 3.2 * len(masks)
    figure, axes = plt.subplots(1, len(masks), figsize=(width, 3.2 * min(2.0, rows * aspect / max(cols, 1)) + 0.5),
                                dpi=dpi, squeeze=False)
    for axis, mask, title, colour in zip(axes[0], masks, titles, colours):
        if background is not None:
            low, high = np.percentile(background, [1, 99]) if background.size else (0, 1)
            axis.imshow(background, cmap="gray", vmin=low, vmax=high if high > low else low + 1, aspect=aspect,
                        interpolation="nearest")
        else:
            axis.imshow(np.zeros_like(mask, dtype=float), cmap="gray_r", vmin=0, vmax=1, aspect=aspect)
        if mask.any() and not mask.all():
            axis.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.2)
        axis.set_title(title, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"{name}: {' / '.join(ranks)} case {case} ({where})", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def pictures_html(pictures: list[CasePicture]) -> str:
    """The pictures as inline ``<img>`` elements, grouped by class."""
    import base64
    import html

    if not pictures:
        return '<p class="note">No case has a defined Dice, so there is nothing to draw.</p>'
    parts = []
    for picture in pictures:
        dice = ", ".join(f"{d:.3f}" if not math.isnan(d) else "n/a" for d in picture.dice)
        alt = f"{picture.class_name}, {' / '.join(picture.ranks)} case {picture.case} (Dice {dice})"
        parts.append(f'<img alt="{html.escape(alt)}" title="{html.escape(alt)}" '
                     f'src="data:image/png;base64,{base64.b64encode(picture.png).decode("ascii")}">')
    return "\n".join(parts)
