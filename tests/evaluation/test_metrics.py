"""Dice / HD95 / ASSD against hand-computed toys, medpy, brute force, nnU-Net and MONAI."""

from __future__ import annotations

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy.ndimage import binary_erosion, gaussian_filter, generate_binary_structure
from scipy.spatial.distance import cdist

from medattn.evaluation.metrics import (
    binary_metrics,
    bounding_box,
    label_metrics,
    surface_distances,
    union_box,
)

# (z, y, x) spacing: x is the finest axis, z the coarsest, so swapped axes change results.
SPACING = (2.0, 1.5, 0.5)


def cube(shape, start, size=4):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


# ------------------------------------------------------------------ hand-computed toys


def test_cubes_offset_along_x_by_one_voxel():
    # gt: 4^3 cube; pred: the same cube one voxel further along x (0.5 mm).
    # Each mask has 56 surface voxels (64 minus the 2^3 interior). From either side, the
    # 16 voxels of the face beyond the other cube and the 4 face-interior voxels of the
    # opposite face are 1 voxel along x (0.5 mm) from the other surface; the other 36
    # lie on the other surface. So 40 of 112 distances are 0.5 mm, 72 are 0:
    # HD95 = 0.5 (sorted position 0.95 * 111 = 105.45 falls in the 0.5 block),
    # ASSD = 40 * 0.5 / 112. Overlap 48 voxels: Dice = 2 * 48 / 128.
    gt = cube((8, 8, 10), (2, 2, 2))
    pred = cube((8, 8, 10), (2, 2, 3))
    m = binary_metrics(pred, gt, SPACING)
    assert m["dice"] == pytest.approx(0.75)
    assert m["hd95"] == pytest.approx(0.5)
    assert m["assd"] == pytest.approx(20 / 112)
    assert m["vol_pred"] == m["vol_gt"] == pytest.approx(64 * 1.5)
    assert m["vol_diff"] == 0.0 and m["rvd"] == 0.0


def test_cubes_offset_along_z_use_the_nearest_surface_in_physical_space():
    # Shift by one voxel along z (2 mm). The 16 voxels of each face beyond the other cube
    # are 2 mm from the other surface; the 4 face-interior voxels of the opposite face
    # are nearer to the other cube's x faces (1 voxel of 0.5 mm) than to its z face.
    # 32 distances of 2 mm, 8 of 0.5 mm, 72 of 0: HD95 = 2, ASSD = (64 + 4) / 112.
    gt = cube((10, 8, 8), (2, 2, 2))
    pred = cube((10, 8, 8), (3, 2, 2))
    m = binary_metrics(pred, gt, SPACING)
    assert m["dice"] == pytest.approx(0.75)
    assert m["hd95"] == pytest.approx(2.0)
    assert m["assd"] == pytest.approx(68 / 112)
    # In voxels (TransUNet's unit) the same masks give 1 voxel and (32 + 8) / 112.
    v = binary_metrics(pred, gt, None)
    assert v["hd95"] == pytest.approx(1.0)
    assert v["assd"] == pytest.approx(40 / 112)


def test_disjoint_cubes_five_voxels_apart_along_z():
    # pred is gt moved 5 voxels up: layers of its surface are 2, 3, 4, 5 voxels above gt's
    # top face, holding 16, 12, 12, 16 surface voxels (full faces, then rings); the same
    # from gt's side. Distances 4, 6, 8, 10 mm with counts 32, 24, 24, 32:
    # HD95 = 10, ASSD = (32*4 + 24*6 + 24*8 + 32*10) / 112 = 7, Dice 0.
    gt = cube((14, 6, 6), (0, 1, 1))
    pred = cube((14, 6, 6), (5, 1, 1))
    m = binary_metrics(pred, gt, SPACING)
    assert m["dice"] == 0.0
    assert m["hd95"] == pytest.approx(10.0)
    assert m["assd"] == pytest.approx(7.0)


def test_volumes_use_the_voxel_volume():
    gt = cube((8, 8, 8), (2, 2, 2), size=2)  # 8 voxels
    pred = cube((8, 8, 8), (1, 1, 1), size=4)  # 64 voxels
    m = binary_metrics(pred, gt, SPACING)
    voxel = 2.0 * 1.5 * 0.5
    assert m["vol_pred"] == pytest.approx(64 * voxel)
    assert m["vol_gt"] == pytest.approx(8 * voxel)
    assert m["vol_diff"] == pytest.approx(56 * voxel)
    assert m["rvd"] == pytest.approx(7.0)
    assert m["dice"] == pytest.approx(2 * 8 / 72)


# ------------------------------------------------------------------ medpy, bit for bit


def random_blob_pair(rng, shape, touch_border=False):
    def blob():
        size = tuple(int(rng.integers(3, max(4, n // 2))) for n in shape)
        field = gaussian_filter(rng.random(size), sigma=float(rng.uniform(0.6, 2.0)))
        mask = np.zeros(shape, dtype=bool)
        start = [int(rng.integers(0, n - s + 1)) for n, s in zip(shape, size)]
        if touch_border:
            start[0] = 0
        mask[tuple(slice(a, a + s) for a, s in zip(start, size))] = field > np.quantile(field, rng.uniform(0.3, 0.9))
        return mask

    return blob(), blob()


@pytest.mark.parametrize(
    "seed, spacing",
    list(enumerate([None, (0.7, 0.7, 0.7), (2.5, 0.8, 0.8), (3.0, 1.0, 1.0), (1.3, 0.37, 2.9)])),
    ids=lambda v: str(v),
)
def test_cropped_distances_are_bit_identical_to_medpy_on_the_full_volume(seed, spacing):
    rng = np.random.default_rng(seed)
    checked = 0
    for trial in range(12):
        shape = tuple(int(n) for n in rng.integers(18, 40, size=3))
        pred, gt = random_blob_pair(rng, shape, touch_border=trial % 3 == 0)
        if not pred.any() or not gt.any():
            continue
        ours = binary_metrics(pred, gt, spacing)
        assert ours["hd95"] == medpy_binary.hd95(pred, gt, voxelspacing=spacing)
        assert ours["assd"] == medpy_binary.assd(pred, gt, voxelspacing=spacing)
        assert ours["dice"] == medpy_binary.dc(pred, gt)
        # The crop must actually be smaller than the volume for this to mean anything.
        box = union_box([bounding_box(pred), bounding_box(gt)], shape)
        checked += int(np.prod([s.stop - s.start for s in box]) < np.prod(shape))
    assert checked >= 6


def test_cropped_and_full_surface_distances_are_identical_arrays():
    rng = np.random.default_rng(7)
    pred, gt = random_blob_pair(rng, (30, 36, 33))
    cropped = surface_distances(pred, gt, (2.5, 0.8, 0.8), crop=True)
    full = surface_distances(pred, gt, (2.5, 0.8, 0.8), crop=False)
    for a, b in zip(cropped, full):
        np.testing.assert_array_equal(a, b)


def test_two_dimensional_masks_match_medpy():
    rng = np.random.default_rng(3)
    pred, gt = random_blob_pair(rng, (64, 50))
    m = binary_metrics(pred, gt, (0.9, 1.7))
    assert m["hd95"] == medpy_binary.hd95(pred, gt, voxelspacing=(0.9, 1.7))
    assert m["assd"] == medpy_binary.assd(pred, gt, voxelspacing=(0.9, 1.7))


# ------------------------------------------------------------------ brute force


def brute_force_hd95_assd(pred, gt, spacing):
    """All surface points against all surface points, in physical coordinates."""
    footprint = generate_binary_structure(pred.ndim, 1)
    points = []
    for mask in (pred, gt):
        surface = mask & ~binary_erosion(mask, structure=footprint)
        points.append(np.argwhere(surface) * np.asarray(spacing))
    pairwise = cdist(points[0], points[1])
    both = np.concatenate([pairwise.min(axis=1), pairwise.min(axis=0)])
    return np.percentile(both, 95), both.mean()


def test_hd95_and_assd_agree_with_brute_force_over_all_surface_points():
    rng = np.random.default_rng(11)
    for _ in range(15):
        shape = tuple(int(n) for n in rng.integers(6, 13, size=3))
        spacing = tuple(float(s) for s in rng.uniform(0.4, 3.0, size=3))
        pred, gt = rng.random(shape) < 0.3, rng.random(shape) < 0.3
        expected_hd95, expected_assd = brute_force_hd95_assd(pred, gt, spacing)
        m = binary_metrics(pred, gt, spacing)
        assert m["hd95"] == pytest.approx(expected_hd95, rel=1e-12)
        assert m["assd"] == pytest.approx(expected_assd, rel=1e-12)


# ------------------------------------------------------------------ Dice references


def test_dice_agrees_with_nnunet_tp_fp_fn():
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn

    rng = np.random.default_rng(5)
    for _ in range(10):
        gt = rng.integers(0, 4, size=(9, 11, 12))
        pred = np.where(rng.random(gt.shape) < 0.2, rng.integers(0, 4, size=gt.shape), gt)
        ours = label_metrics(pred, gt, [1, 2, 3], (1.0, 1.0, 1.0))
        for k in (1, 2, 3):
            tp, fp, fn, _ = compute_tp_fp_fn_tn(gt == k, pred == k)
            assert ours[k]["dice"] == 2 * tp / (2 * tp + fp + fn)


def test_dice_agrees_with_monai_dice_metric():
    import torch
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(9)
    gt = rng.integers(0, 4, size=(3, 10, 12, 8))
    pred = np.where(rng.random(gt.shape) < 0.25, rng.integers(0, 4, size=gt.shape), gt)
    one_hot = lambda a: torch.nn.functional.one_hot(torch.as_tensor(a), 4).permute(0, 4, 1, 2, 3).float()  # noqa: E731
    monai = DiceMetric(include_background=False, reduction="none")(one_hot(pred), one_hot(gt)).numpy()
    for case in range(3):
        ours = label_metrics(pred[case], gt[case], [1, 2, 3])
        np.testing.assert_allclose([ours[k]["dice"] for k in (1, 2, 3)], monai[case], rtol=1e-6)


# ------------------------------------------------------------------ label maps


def test_label_metrics_equal_binary_metrics_of_each_label():
    rng = np.random.default_rng(13)
    gt = np.zeros((20, 24, 22), dtype=np.int16)
    gt[2:9, 3:12, 4:10] = 1
    gt[10:18, 14:22, 2:20] = 2
    gt[5:7, 15:17, 15:18] = 5
    pred = np.roll(gt, 1, axis=1)
    pred[rng.random(gt.shape) < 0.01] = 2
    spacing = (2.5, 0.75, 0.75)
    ours = label_metrics(pred, gt, [1, 2, 5], spacing)
    for k in (1, 2, 5):
        reference = binary_metrics(pred == k, gt == k, spacing, crop=False)
        assert ours[k] == reference


def test_bounding_box_with_margin_is_clipped_at_the_edge():
    mask = np.zeros((5, 6), dtype=bool)
    mask[0, 2:4] = True
    assert bounding_box(mask, margin=1) == (slice(0, 2), slice(1, 5))
    assert bounding_box(np.zeros((3, 3)), margin=1) is None


# ------------------------------------------------------------------ bad input


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"shape \(4, 4\) differs .* \(4, 5\)"):
        binary_metrics(np.ones((4, 4)), np.ones((4, 5)))


def test_spacing_of_the_wrong_length_is_rejected():
    with pytest.raises(ValueError, match="3 values for a 2-D image"):
        binary_metrics(np.ones((4, 4)), np.ones((4, 4)), (1.0, 1.0, 1.0))


def test_surface_distances_refuse_an_empty_mask():
    with pytest.raises(ValueError, match="non-empty masks"):
        surface_distances(np.zeros((4, 4), bool), np.ones((4, 4), bool))


def test_float_label_arrays_are_rejected_by_label_metrics():
    with pytest.raises(ValueError, match="must be integers"):
        label_metrics(np.zeros((3, 3), float), np.zeros((3, 3), int), [1])
