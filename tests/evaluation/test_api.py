"""evaluate_folders: pairing, formats, references, bad input, atomic outputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from medattn.data.io import Geometry, read_image
from medattn.evaluation import api
from medattn.evaluation.api import (
    CSV_COLUMNS,
    EvaluationError,
    MissingPredictionsError,
    evaluate_folders,
)
from medattn.evaluation.metrics import label_metrics

from .conftest import GEOMETRY, SHAPE, box_labels, write_labels

OUTPUTS = {"metrics.csv", "summary.json", "report.md", "report.html"}


def evaluate(pred, gt, **kwargs):
    return evaluate_folders(pred, gt, progress=False, **kwargs)


def test_tables_match_label_metrics_on_the_arrays(folders):
    gt_dir, pred_dir, _ = folders
    result = evaluate(pred_dir, gt_dir)
    assert list(result.metrics.columns) == list(CSV_COLUMNS)
    assert sorted(result.metrics["label"].unique()) == [1, 2, 3]
    assert len(result.metrics) == 4 * 3
    for case in ("case_00", "case_03"):
        gt, geometry = read_image(gt_dir / f"{case}.nii.gz")
        pred, _ = read_image(pred_dir / f"{case}.nii.gz")
        expected = label_metrics(pred, gt, [1, 2, 3], geometry.spacing_zyx)
        rows = result.metrics[result.metrics["case"] == case].set_index("label")
        for k in (1, 2, 3):
            assert rows.loc[k, "name"] == f"label_{k}"
            for column, value in expected[k].items():
                assert rows.loc[k, column] == value or (math.isnan(value) and math.isnan(rows.loc[k, column]))
    per_class = result.per_class.set_index("label")
    assert per_class.loc[2, "dice_mean"] == pytest.approx(result.metrics.query("label == 2")["dice"].mean())
    assert result.mean["dice"] == pytest.approx(per_class["dice_mean"].mean())


def test_dice_matches_nnunet_evaluator_on_the_files(tmp_path, folders):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    gt_dir, pred_dir, _ = folders
    # A fourth label that no image holds: nnU-Net gives NaN, as the nnunet convention.
    result = evaluate(pred_dir, gt_dir, labels="1=a,2=b,3=c,4=d", convention="nnunet")
    for case in ("case_00", "case_01", "case_02", "case_03"):
        reference = compute_metrics(str(gt_dir / f"{case}.nii.gz"), str(pred_dir / f"{case}.nii.gz"),
                                    SimpleITKIO(), [1, 2, 3, 4])["metrics"]
        ours = result.metrics[result.metrics["case"] == case].set_index("label")["dice"]
        np.testing.assert_array_equal(ours.to_numpy(), [reference[k]["Dice"] for k in (1, 2, 3, 4)])
    assert math.isnan(result.per_class.set_index("label").loc[4, "dice_mean"])


def test_cases_are_paired_by_name_across_formats(tmp_path):
    truth = box_labels({1: np.s_[2:6, 3:9, 4:12], 2: np.s_[6:9, 8:14, 2:8]})
    pred = np.roll(truth, 1, axis=2)
    for i, suffix in enumerate((".nii.gz", ".nrrd", ".mha", ".nii")):
        write_labels(tmp_path / "gt", f"c{i}", truth)
        write_labels(tmp_path / "pred", f"c{i}", pred, suffix=suffix)
    result = evaluate(tmp_path / "pred", tmp_path / "gt")
    dice = result.metrics.pivot(index="case", columns="label", values="dice")
    assert list(dice.index) == ["c0", "c1", "c2", "c3"]
    assert (dice.nunique() == 1).all()  # same masks, same numbers, whatever the format


def test_spacing_voxel_reports_voxels(folders):
    gt_dir, pred_dir, _ = folders
    mm = evaluate(pred_dir, gt_dir).metrics
    voxels = evaluate(pred_dir, gt_dir, spacing="voxel").metrics
    gt, _ = read_image(gt_dir / "case_01.nii.gz")
    pred, _ = read_image(pred_dir / "case_01.nii.gz")
    expected = label_metrics(pred, gt, [1], None)[1]
    row = voxels[(voxels["case"] == "case_01") & (voxels["label"] == 1)].iloc[0]
    assert row["hd95"] == expected["hd95"] and row["vol_gt"] == (gt == 1).sum()
    np.testing.assert_array_equal(mm["dice"], voxels["dice"])


def test_label_map_subset_is_scored_and_other_values_are_valid(folders, tmp_path):
    gt_dir, pred_dir, _ = folders
    path = tmp_path / "dataset.json"
    path.write_text('{"labels": {"background": 0, "liver": 1, "aorta": 2, "spleen": 3}, "evaluate_labels": ["aorta"]}')
    result = evaluate(pred_dir, gt_dir, labels=path)
    assert set(result.metrics["name"]) == {"aorta"}
    assert result.summary["labels"] == {"2": "aorta"}


def test_unmatched_predictions_are_reported_not_scored(folders):
    gt_dir, pred_dir, _ = folders
    write_labels(pred_dir, "extra_case", box_labels({1: np.s_[1:3, 1:3, 1:3]}))
    result = evaluate(pred_dir, gt_dir)
    assert "extra_case" not in set(result.metrics["case"])
    assert result.summary["unmatched_predictions"][str(pred_dir)] == ["extra_case"]


# ------------------------------------------------------------------ missing predictions


def test_missing_predictions_are_listed(folders, tmp_path):
    gt_dir, pred_dir, _ = folders
    (pred_dir / "case_01.nii.gz").unlink()
    (pred_dir / "case_03.nii.gz").unlink()
    with pytest.raises(MissingPredictionsError, match="2 of 4 ground-truth cases have no prediction") as info:
        evaluate(pred_dir, gt_dir, out_dir=tmp_path / "out")
    assert info.value.problems == ["case_01", "case_03"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("convention, dice, hd95", [("nnunet", 0.0, math.nan), ("transunet", 0.0, 0.0),
                                                     ("strict", 0.0, "diagonal")])
def test_missing_as_empty_scores_an_empty_prediction(folders, convention, dice, hd95):
    gt_dir, pred_dir, _ = folders
    (pred_dir / "case_02.nii.gz").unlink()
    result = evaluate(pred_dir, gt_dir, convention=convention, missing_as_empty=True)
    rows = result.metrics[result.metrics["case"] == "case_02"]
    present = rows[rows["vol_gt"] > 0]
    assert len(present) > 0 and (present["dice"] == dice).all() and (present["vol_pred"] == 0).all()
    if hd95 == "diagonal":
        z, y, x = SHAPE
        sx, sy, sz = GEOMETRY.spacing
        hd95 = math.sqrt(((z - 1) * sz) ** 2 + ((y - 1) * sy) ** 2 + ((x - 1) * sx) ** 2)
    assert all(h == pytest.approx(hd95, nan_ok=True) for h in present["hd95"])


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "field, geometry, message",
    [
        ("shape", Geometry((10, 16, 17), GEOMETRY.spacing, GEOMETRY.origin, GEOMETRY.direction),
         r"shape differs: ground truth \(10, 16, 18\) vs prediction \(10, 16, 17\)"),
        ("spacing", Geometry(SHAPE, (0.8, 0.9, 3.0), GEOMETRY.origin, GEOMETRY.direction),
         r"spacing differs: ground truth \(0.8, 0.9, 2.5\) vs prediction \(0.8, 0.9, 3\)"),
        ("origin", Geometry(SHAPE, GEOMETRY.spacing, (-10.0, 5.0, 31.0), GEOMETRY.direction),
         r"origin differs: ground truth \(-10, 5, 30\) vs prediction \(-10, 5, 31\)"),
        ("direction", Geometry(SHAPE, GEOMETRY.spacing, GEOMETRY.origin, (1, 0, 0, 0, -1, 0, 0, 0, 1)),
         # NIfTI stores the matrix as a quaternion, so zeros may come back as -0.
         r"direction differs: ground truth \(1, -?0, -?0, -?0, 1, .*\) vs prediction \(1, -?0, -?0, -?0, -1,"),
    ],
)
def test_geometry_mismatch_names_the_field_and_both_values(folders, tmp_path, field, geometry, message):
    gt_dir, pred_dir, _ = folders
    write_labels(pred_dir, "case_02", np.zeros(geometry.shape, np.uint8), geometry)
    with pytest.raises(EvaluationError, match=message) as info:
        evaluate(pred_dir, gt_dir, out_dir=tmp_path / "out")
    assert "case_02" in str(info.value) and len(info.value.problems) == 1
    assert not (tmp_path / "out").exists()


def test_geometry_within_tolerance_is_accepted(folders):
    gt_dir, pred_dir, _ = folders
    nudged = Geometry(SHAPE, (0.8, 0.9, 2.5 + 1e-6), (-10.0, 5.0, 30.0 + 1e-5), GEOMETRY.direction)
    truth, _ = read_image(gt_dir / "case_00.nii.gz")
    write_labels(pred_dir, "case_00", truth, nudged)
    result = evaluate(pred_dir, gt_dir)
    assert (result.metrics.query("case == 'case_00'")["dice"] == 1.0).all()


def test_values_outside_the_label_map_name_the_file_and_values(folders):
    gt_dir, pred_dir, _ = folders
    truth, _ = read_image(gt_dir / "case_01.nii.gz")
    truth[0, 0, :3] = [7, 9, 7]
    write_labels(pred_dir, "case_01", truth)
    with pytest.raises(EvaluationError, match=r"case_01.nii.gz: label values \[7, 9\] are not in the label map"):
        evaluate(pred_dir, gt_dir, labels="1=a,2=b,3=c")


def test_prediction_values_absent_from_every_ground_truth_are_an_error(folders):
    gt_dir, pred_dir, _ = folders
    truth, _ = read_image(gt_dir / "case_03.nii.gz")
    truth[0, 0, 0] = 12
    write_labels(pred_dir, "case_03", truth)
    with pytest.raises(EvaluationError, match=r"pred/case_03.nii.gz: label values \[12\] do not occur"):
        evaluate(pred_dir, gt_dir)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize(
    "values, message",
    [
        (np.nan, r"1 NaN and 0 infinite voxel"),
        (np.inf, r"0 NaN and 1 infinite voxel"),
        (1.5, r"non-integer label values, e.g. \[1.5\]"),
        (-1.0, r"negative label values, e.g. \[-1.0\]"),
    ],
)
def test_invalid_voxel_values_name_the_file(folders, values, message, suffix):
    gt_dir, pred_dir, _ = folders
    truth, _ = read_image(gt_dir / "case_00.nii.gz")
    bad = truth.astype(np.float32)
    bad[1, 1, 1] = values
    (pred_dir / "case_00.nii.gz").unlink()
    write_labels(pred_dir, "case_00", bad, suffix=suffix)
    with pytest.raises(EvaluationError, match=message) as info:
        evaluate(pred_dir, gt_dir)
    assert f"pred/case_00{suffix}" in str(info.value)


def test_whole_number_float_labels_are_accepted(folders):
    gt_dir, pred_dir, _ = folders
    truth, _ = read_image(gt_dir / "case_00.nii.gz")
    write_labels(pred_dir, "case_00", truth.astype(np.float32))
    result = evaluate(pred_dir, gt_dir)
    assert (result.metrics.query("case == 'case_00'")["dice"] == 1.0).all()


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file_is_named(folders, suffix, keep):
    # SimpleITK alone reads truncated NIfTI files without complaint (zeros for the rest).
    gt_dir, pred_dir, _ = folders
    truth, _ = read_image(gt_dir / "case_02.nii.gz")
    (pred_dir / "case_02.nii.gz").unlink()
    path = write_labels(pred_dir, "case_02", truth, suffix=suffix)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(EvaluationError, match=f"case_02{suffix}: (cannot read image|file is truncated)"):
        evaluate(pred_dir, gt_dir)


def test_corrupted_compressed_nifti_is_named(folders):
    # SimpleITK reads flipped bytes inside a .nii.gz as garbage voxels without an error;
    # the gzip CRC catches them.
    gt_dir, pred_dir, _ = folders
    path = pred_dir / "case_03.nii.gz"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    path.write_bytes(bytes(data))
    with pytest.raises(EvaluationError, match="case_03.nii.gz: cannot read image"):
        evaluate(pred_dir, gt_dir)


def test_file_that_is_not_an_image_is_named(folders):
    gt_dir, pred_dir, _ = folders
    (pred_dir / "case_01.nii.gz").write_bytes(b"this is not an image")
    with pytest.raises(EvaluationError, match="case_01.nii.gz: cannot read image"):
        evaluate(pred_dir, gt_dir)


def test_duplicate_case_names_in_a_folder_are_an_error(folders):
    gt_dir, pred_dir, _ = folders
    truth, _ = read_image(gt_dir / "case_00.nii.gz")
    write_labels(pred_dir, "case_00", truth, suffix=".nrrd")
    with pytest.raises(EvaluationError, match="two prediction files for case 'case_00'"):
        evaluate(pred_dir, gt_dir)


def test_bad_arguments_are_rejected(folders, tmp_path):
    gt_dir, pred_dir, _ = folders
    with pytest.raises(ValueError, match="unknown spacing mode 'mm'"):
        evaluate(pred_dir, gt_dir, spacing="mm")
    with pytest.raises(ValueError, match="unknown convention"):
        evaluate(pred_dir, gt_dir, convention="medpy")
    with pytest.raises(ValueError, match="jobs must be"):
        evaluate(pred_dir, gt_dir, jobs=-1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no ground-truth images"):
        evaluate(pred_dir, tmp_path / "empty")


# ------------------------------------------------------------------ outputs


def test_outputs_are_written_atomically(folders, tmp_path, monkeypatch):
    gt_dir, pred_dir, _ = folders
    out = tmp_path / "out"

    def interrupted(result):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C while the HTML is built

    monkeypatch.setattr("medattn.evaluation.report.html_report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(pred_dir, gt_dir, out_dir=out)
    # the set is rendered before anything is written: nothing half of a run, no temporary
    assert not out.exists() or not list(out.iterdir())
    monkeypatch.undo()
    evaluate(pred_dir, gt_dir, out_dir=out.parent / "whole")
    assert (out.parent / "whole" / "metrics.csv").read_text().count("\n") == 1 + 12


def test_compare_writes_comparison_tables(folders, tmp_path):
    gt_dir, pred_dir, other_dir = folders
    result = evaluate(pred_dir, gt_dir, compare=other_dir, out_dir=tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == OUTPUTS | {"metrics_compare.csv", "comparison.csv"}
    dice = result.comparison[(result.comparison["metric"] == "dice")].set_index("label")
    assert (dice.loc[[1, 2, 3], "n"] == 4).all()
    merged = result.metrics.merge(result.compare_metrics, on=["case", "label"])
    label1 = merged[merged["label"] == 1]
    assert dice.loc[1, "mean_diff"] == pytest.approx((label1["dice_x"] - label1["dice_y"]).mean())
    assert dice.loc[1, "wins"] == (label1["dice_x"] > label1["dice_y"]).sum()


@pytest.mark.slow
def test_parallel_jobs_give_the_same_tables(folders):
    gt_dir, pred_dir, other_dir = folders
    serial = evaluate(pred_dir, gt_dir, compare=other_dir, jobs=1)
    parallel = evaluate(pred_dir, gt_dir, compare=other_dir, jobs=2)
    assert serial.metrics.equals(parallel.metrics)
    assert serial.comparison.equals(parallel.comparison)


def test_collects_every_failing_case_before_failing(folders, monkeypatch):
    gt_dir, pred_dir, _ = folders
    for case in ("case_00", "case_02"):
        truth, _ = read_image(gt_dir / f"{case}.nii.gz")
        truth[0, 0, 0] = 8
        write_labels(pred_dir, case, truth)
    with pytest.raises(EvaluationError) as info:
        evaluate(pred_dir, gt_dir, labels="1=a,2=b,3=c")
    assert len(info.value.problems) == 2
    assert all(Path(p.split(":")[0]).name.startswith("case_0") for p in info.value.problems)


def test_sparse_label_lookup_gives_the_same_tables(folders, monkeypatch):
    # Label values above _MAX_DENSE_LABEL take the np.unique path instead of find_objects.
    gt_dir, pred_dir, _ = folders
    dense = evaluate(pred_dir, gt_dir)
    monkeypatch.setattr(api, "_MAX_DENSE_LABEL", 1)
    sparse = evaluate(pred_dir, gt_dir)
    assert dense.metrics.equals(sparse.metrics)
