"""What Dice and the surface distances are when a mask is empty.

Published Dice/HD95 numbers are only comparable when this is stated. Three conventions:

============  ===================  =========================  =========================
convention    both empty           prediction empty (FN)      ground truth empty (FP)
============  ===================  =========================  =========================
transunet     Dice 0, dist. 0      Dice 0, dist. 0            Dice 1, dist. 0
nnunet        Dice NaN, dist. NaN  Dice 0, dist. NaN          Dice 0, dist. NaN
strict        Dice 1, dist. 0      Dice 0, dist. worst        Dice 0, dist. worst
============  ===================  =========================  =========================

"dist." stands for HD95 and ASSD. NaN values are left out of every mean (and counted).
"worst" is the largest distance the image grid allows: its diagonal, from the first to the
last voxel centre, in the unit of the distances (mm, or voxels with ``spacing="voxel"``).

* ``transunet`` reproduces ``calculate_metric_percase`` of TransUNet (Chen et al., 2021),
  copied by Swin-Unet and others. It rewards a missed organ with HD95 0 and a
  hallucinated one with Dice 1. Its published HD95 also ignores the voxel spacing: use
  ``spacing="voxel"`` as well to reproduce those numbers.
* ``nnunet`` follows nnU-Net v2's evaluator for Dice (NaN when both masks are empty); the
  distances, which nnU-Net does not compute, are undefined (NaN) as soon as one mask is
  empty, so a missed or hallucinated structure shows in Dice only.
* ``strict`` scores a correctly absent structure as perfect and every miss or
  hallucination with the worst possible values, so nothing is excluded from the means.

The volume columns are defined in every case; the relative volume difference is NaN
whenever the ground truth is empty, in every convention.
"""

from __future__ import annotations

import math
from typing import NamedTuple

CONVENTIONS = ("transunet", "nnunet", "strict")

#: Marker in :data:`RULES` for the worst-case distance of the image grid.
WORST = "worst"

#: (Dice, distance) per convention and per empty case: "both", "pred" (only the
#: prediction is empty) or "gt" (only the ground truth is empty).
RULES: dict[str, dict[str, tuple[float, float | str]]] = {
    "transunet": {"both": (0.0, 0.0), "pred": (0.0, 0.0), "gt": (1.0, 0.0)},
    "nnunet": {"both": (math.nan, math.nan), "pred": (0.0, math.nan), "gt": (0.0, math.nan)},
    "strict": {"both": (1.0, 0.0), "pred": (0.0, WORST), "gt": (0.0, WORST)},
}

#: One-line summaries, written into the reports.
DESCRIPTIONS = {
    "transunet": "TransUNet's loop: both empty gives Dice 0 / HD95 0, an empty prediction "
    "Dice 0 / HD95 0, a prediction on an empty ground truth Dice 1 / HD95 0.",
    "nnunet": "nnU-Net: both empty gives NaN (excluded from means); one empty mask gives "
    "Dice 0 and undefined (NaN, excluded) distances.",
    "strict": "strict: both empty gives Dice 1 / distance 0; one empty mask gives Dice 0 and "
    "the worst distance (the image diagonal).",
}


class EmptyCaseScores(NamedTuple):
    """Dice and the two surface distances assigned to an empty-mask case."""

    dice: float
    hd95: float
    assd: float


def check_convention(convention: str) -> str:
    """Return ``convention`` if it is known.

    Raises:
        ValueError: naming the value and the valid choices.
    """
    if convention not in RULES:
        raise ValueError(f"unknown convention {convention!r}; choose one of {list(CONVENTIONS)}")
    return convention


def empty_case_scores(convention: str, pred_empty: bool, gt_empty: bool, worst_distance: float) -> EmptyCaseScores:
    """Scores of a label whose prediction or ground truth (or both) is empty.

    Args:
        convention: one of :data:`CONVENTIONS`.
        pred_empty: the predicted mask has no voxel.
        gt_empty: the ground-truth mask has no voxel.
        worst_distance: the distance ``strict`` assigns to a miss (the grid diagonal).

    Returns:
        Dice, HD95 and ASSD under that convention.

    Raises:
        ValueError: if neither mask is empty (then the metrics are computed, not assigned)
            or the convention is unknown.
    """
    check_convention(convention)
    if not (pred_empty or gt_empty):
        raise ValueError("empty_case_scores needs an empty prediction or ground truth")
    case = "both" if pred_empty and gt_empty else ("pred" if pred_empty else "gt")
    dice, distance = RULES[convention][case]
    distance = float(worst_distance) if distance == WORST else float(distance)
    return EmptyCaseScores(float(dice), distance, distance)


def grid_diagonal(shape, spacing=None) -> float:
    """Distance between the first and the last voxel centre of a grid.

    Args:
        shape: array shape.
        spacing: voxel size per array axis, or None for unit spacing.

    Returns:
        ``sqrt(sum(((n_i - 1) * s_i) ** 2))``.
    """
    spacing = [1.0] * len(shape) if spacing is None else list(spacing)
    if len(spacing) != len(shape):
        raise ValueError(f"spacing {tuple(spacing)} does not match the {len(shape)}-D shape {tuple(shape)}")
    return math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing)))


def conventions_rows() -> tuple[list[str], list[list[str]]]:
    """The convention table as headers and rows of text (for the reports)."""

    def cell(dice, distance) -> str:
        d = "NaN" if math.isnan(dice) else f"{dice:g}"
        h = "worst (diagonal)" if distance == WORST else ("NaN" if math.isnan(distance) else f"{distance:g}")
        return f"Dice {d}, HD95/ASSD {h}"

    headers = ["convention", "both empty", "prediction empty", "ground truth empty"]
    rows = [[name] + [cell(*RULES[name][case]) for case in ("both", "pred", "gt")] for name in CONVENTIONS]
    return headers, rows


def conventions_markdown_table() -> str:
    """The convention table as Markdown (for README.md and report.md)."""
    headers, rows = conventions_rows()
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += [f"| `{row[0]}` | " + " | ".join(row[1:]) + " |" for row in rows]
    return "\n".join(lines)
