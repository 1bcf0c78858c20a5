"""Every empty-mask convention on empty/empty and empty/non-empty masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medattn.evaluation.conventions import (
    CONVENTIONS,
    conventions_markdown_table,
    empty_case_scores,
    grid_diagonal,
)
from medattn.evaluation.metrics import binary_metrics, label_metrics

SHAPE = (6, 7, 8)
SPACING = (3.0, 1.0, 0.5)
# From voxel (0, 0, 0) to voxel (5, 6, 7): sqrt(15^2 + 6^2 + 3.5^2).
DIAGONAL = math.sqrt(15.0**2 + 6.0**2 + 3.5**2)

EMPTY = np.zeros(SHAPE, dtype=bool)
FULL = np.zeros(SHAPE, dtype=bool)
FULL[1:4, 2:5, 2:6] = True

NAN = math.nan
# convention -> (both empty, prediction empty, ground truth empty) as (dice, hd95)
EXPECTED = {
    "transunet": ((0.0, 0.0), (0.0, 0.0), (1.0, 0.0)),
    "nnunet": ((NAN, NAN), (0.0, NAN), (0.0, NAN)),
    "strict": ((1.0, 0.0), (0.0, DIAGONAL), (0.0, DIAGONAL)),
}


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("case, pred, gt", [(0, EMPTY, EMPTY), (1, EMPTY, FULL), (2, FULL, EMPTY)],
                         ids=["both-empty", "pred-empty", "gt-empty"])
def test_convention_scores(convention, case, pred, gt):
    dice, distance = EXPECTED[convention][case]
    m = binary_metrics(pred, gt, SPACING, convention=convention)
    assert same(m["dice"], dice)
    assert same(m["hd95"], distance) and same(m["assd"], distance)
    # Volumes do not depend on the convention; rvd is undefined without ground truth.
    assert m["vol_pred"] == pred.sum() * 1.5 and m["vol_gt"] == gt.sum() * 1.5
    assert math.isnan(m["rvd"]) == (not gt.any())


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_label_absent_from_both_label_maps_follows_the_convention(convention):
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[FULL] = 1
    m = label_metrics(labels, labels, [1, 2], SPACING, convention)
    assert m[1]["dice"] == 1.0 and m[1]["hd95"] == 0.0
    assert same(m[2]["dice"], EXPECTED[convention][0][0])


def test_non_empty_masks_do_not_depend_on_the_convention():
    shifted = np.roll(FULL, 1, axis=2)
    results = [binary_metrics(shifted, FULL, SPACING, convention=c) for c in CONVENTIONS]
    assert results[0] == results[1] == results[2]


def test_strict_worst_distance_in_voxels_is_the_voxel_diagonal():
    m = binary_metrics(FULL, EMPTY, None, convention="strict")
    assert m["hd95"] == pytest.approx(math.sqrt(5**2 + 6**2 + 7**2))
    assert grid_diagonal((1, 1)) == 0.0


def test_unknown_convention_is_rejected():
    with pytest.raises(ValueError, match="unknown convention 'medpy'"):
        empty_case_scores("medpy", True, True, 1.0)
    with pytest.raises(ValueError, match="needs an empty"):
        empty_case_scores("nnunet", False, False, 1.0)


def test_markdown_table_lists_every_convention():
    table = conventions_markdown_table()
    assert all(f"`{c}`" in table for c in CONVENTIONS)
    assert len(table.splitlines()) == 2 + len(CONVENTIONS)
