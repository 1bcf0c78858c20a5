"""nnU-Net v2's ignore label (sparse annotation): parsing, metrics against nnU-Net's own
evaluator and medpy, the bounding-box fast path, folders, reports and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary

from medattn.cli import main
from medattn.data.io import read_image
from medattn.evaluation.api import EvaluationError, evaluate_folders
from medattn.evaluation.labels import LabelMap, LabelMapError, Region, parse_label_map
from medattn.evaluation.metrics import binary_metrics, label_metrics

from tests.cli_help import help_text
from .conftest import GEOMETRY, box_labels, perturb, random_case, write_labels

IGNORE = 4
LABELS = {"background": 0, "liver": 1, "spleen": 2, "aorta": 3, "ignore": IGNORE}
BRATS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3], "ignore": IGNORE}
REGIONS = [(1, 2, 3), (2, 3), (3,)]
REGION_KEYS = ["1+2+3", "2+3", "3"]
CASES = [f"case_{i:02d}" for i in range(4)]
SPACING = (2.5, 0.8, 0.9)  # (z, y, x), anisotropic


def write_dataset_json(tmp_path, labels=LABELS, **extra):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": labels, **extra}))
    return path


def evaluate(pred, gt, **kwargs):
    return evaluate_folders(pred, gt, progress=False, **kwargs)


def sparse(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``truth`` annotated sparsely: every third z slice and one random box hold the ignore label."""
    annotated = truth.copy()
    annotated[1::3] = IGNORE
    lo = [int(rng.integers(0, n - 3)) for n in truth.shape]
    annotated[tuple(slice(a, a + 3) for a in lo)] = IGNORE
    return annotated


def reduced_masks(pred, gt, values):
    """The masks of ``values`` with the ignored ground-truth voxels removed."""
    kept = gt != IGNORE
    return np.isin(pred, values) & kept, np.isin(gt, values) & kept


# ------------------------------------------------------------------ parsing


def test_dataset_json_ignore_entry_is_the_ignore_label(tmp_path):
    label_map = parse_label_map(write_dataset_json(tmp_path))
    assert label_map.ignore_label == IGNORE
    assert label_map.names == {1: "liver", 2: "spleen", 3: "aorta"} and label_map.scored == (1, 2, 3)
    assert label_map.valid_values == frozenset({0, 1, 2, 3, IGNORE})
    assert label_map.prediction_values == frozenset({0, 1, 2, 3})


@pytest.mark.parametrize(
    "spec",
    [
        "1=liver,2=spleen,3=aorta,4=ignore",
        "liver=1,spleen=2,aorta=3,ignore=4",
        {"0": "background", "1": "liver", "2": "spleen", "3": "aorta", "4": "ignore"},  # MSD spelling
        {1: "liver", 2: "spleen", 3: "aorta", 4: "ignore"},  # {value: name}
        LABELS,  # the "labels" object of a dataset.json
    ],
)
def test_every_spelling_gives_the_same_ignore_label(spec):
    label_map = parse_label_map(spec)
    assert label_map.ignore_label == IGNORE
    assert label_map.names == {1: "liver", 2: "spleen", 3: "aorta"}


def test_a_map_without_ignore_entry_has_none():
    label_map = parse_label_map("1=liver,2=spleen")
    assert label_map.ignore_label is None
    assert label_map.prediction_values == label_map.valid_values


def test_region_map_with_ignore_label(tmp_path):
    label_map = parse_label_map(write_dataset_json(tmp_path, BRATS, regions_class_order=[1, 2, 3]))
    assert label_map.has_regions and label_map.ignore_label == IGNORE
    assert [region.values for region in label_map.scored] == REGIONS  # the ignore entry is no region
    assert label_map.valid_values == frozenset({0, 1, 2, 3, IGNORE})
    assert parse_label_map("whole_tumor=1+2+3,tumor_core=2+3,enhancing_tumor=3,ignore=4") == LabelMap(
        names={}, scored=label_map.scored, source="inline label map", regions=label_map.regions, ignore_label=IGNORE
    )


@pytest.mark.parametrize(
    "labels, regions_class_order",
    [(LABELS, None), ({"background": 0, "liver": 1, "ignore": 2}, None), (BRATS, [1, 2, 3])],
)
def test_ignore_label_agrees_with_nnunet_label_manager(tmp_path, labels, regions_class_order):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    manager = LabelManager(labels, regions_class_order=regions_class_order)
    label_map = parse_label_map(write_dataset_json(tmp_path, labels))
    assert label_map.ignore_label == manager.ignore_label
    if manager.has_regions:
        assert [region.values for region in label_map.regions] == [tuple(r) for r in manager.all_regions]
    else:
        assert sorted(label_map.names) == [k for k in manager.all_labels if k != 0]


@pytest.mark.parametrize(
    "labels",
    [
        {"background": 0, "liver": 1, "ignore": 1},
        {"background": 0, "liver": 1, "ignore": 2, "spleen": 3},
        {"background": 0, "whole_tumor": [1, 2, 3], "core": [2, 3], "ignore": 2},
    ],
)
def test_an_ignore_label_below_a_label_is_rejected_like_nnunet(tmp_path, labels):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    with pytest.raises(AssertionError, match="highest"):
        LabelManager(labels, regions_class_order=[1, 2] if "core" in labels else None)
    path = write_dataset_json(tmp_path, labels)
    with pytest.raises(LabelMapError, match=rf"ignore label {labels['ignore']} must be the highest label value"):
        parse_label_map(path)


@pytest.mark.parametrize(
    "labels, extra, message",
    [
        ({"background": 0, "liver": 1, "ignore": 2, "spleen": 3}, {},
         r"ignore label 2 must be the highest label value, as nnU-Net requires, but label 'spleen' has value 3"),
        ({"background": 0, "whole_tumor": [1, 2, 3], "ignore": 3}, {},
         r"ignore label 3 must be the highest label value, as nnU-Net requires, but region 'whole_tumor' has value 3"),
        ({"background": 0, "liver": 1, "ignore": [2, 3]}, {}, r"the ignore label must be one value, not a region, got 2\+3"),
        ({"background": 0, "liver": 1, "ignore": 0}, {}, r"the ignore label must be an integer > 0, got 0"),
        ({"background": 0, "liver": 1, "ignore": "x"}, {}, r"label value 'x' is not an integer"),
        (LABELS, {"evaluate_labels": ["liver", "ignore"]}, r"\"evaluate_labels\" lists the ignore label \('ignore', value 4\)"),
        (LABELS, {"evaluate_labels": [1, 4]}, r"\"evaluate_labels\" lists the ignore label \(4, value 4\)"),
        (LABELS, {"evaluate_labels": ["4"]}, r"\"evaluate_labels\" lists the ignore label \('4', value 4\)"),
        (BRATS, {"evaluate_labels": ["ignore"]}, r"\"evaluate_labels\" lists the ignore label"),
        ({"background": 0, "ignore": 1}, {}, r"no label to score"),
    ],
)
def test_malformed_ignore_labels_name_the_file_and_the_value(tmp_path, labels, extra, message):
    path = write_dataset_json(tmp_path, labels, **extra)
    with pytest.raises(LabelMapError, match=message) as info:
        parse_label_map(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("1=liver,3=spleen,2=ignore", r"ignore label 2 must be the highest label value.*'spleen' has value 3"),
        ("1=liver,2=ignore,3=ignore", r"the ignore label is given twice \(2 and 3\)"),
        ("1=liver,ignore=2+3", r"the ignore label must be one value, not a region, got 2\+3"),
        ("whole_tumor=1+2+3,ignore=2", r"ignore label 2 must be the highest.*region 'whole_tumor' has value 3"),
    ],
)
def test_malformed_inline_ignore_labels(text, message):
    with pytest.raises(LabelMapError, match=message):
        parse_label_map(text)


def test_label_map_built_directly_checks_the_ignore_label():
    assert LabelMap(names={1: "liver"}, scored=(1,), ignore_label=5).ignore_label == 5  # values may be skipped
    with pytest.raises(LabelMapError, match=r"ignore label 1 must be the highest label value"):
        LabelMap(names={1: "liver"}, scored=(1,), ignore_label=1)
    with pytest.raises(LabelMapError, match=r"must be an integer > 0, got True"):
        LabelMap(names={1: "liver"}, scored=(1,), ignore_label=True)
    # The name always means nnU-Net's ignore label, so it cannot name a scored entry.
    with pytest.raises(LabelMapError, match=r"the name 'ignore' is reserved"):
        LabelMap(names={1: "ignore"}, scored=(1,))
    with pytest.raises(LabelMapError, match=r"the name 'ignore' is reserved"):
        LabelMap(names={}, scored=(Region("ignore", (1, 2)),), regions=(Region("ignore", (1, 2)),))


# ------------------------------------------------------------------ metrics


def test_label_and_region_metrics_equal_medpy_on_the_masks_without_ignored_voxels(rng):
    truth = random_case(rng)
    pred, gt = perturb(truth, rng), sparse(truth, rng)
    entries = [1, 2, 3, *REGIONS]
    ours = label_metrics(pred, gt, entries, SPACING, ignore_label=IGNORE)
    for entry in entries:
        pred_mask, gt_mask = reduced_masks(pred, gt, entry)
        assert ours[entry] == binary_metrics(pred_mask, gt_mask, SPACING, crop=False)
        assert ours[entry]["hd95"] == medpy_binary.hd95(pred_mask, gt_mask, voxelspacing=SPACING)
        assert ours[entry]["assd"] == medpy_binary.assd(pred_mask, gt_mask, voxelspacing=SPACING)
        assert ours[entry]["vol_pred"] == np.count_nonzero(pred_mask) * math.prod(SPACING)


def test_ignored_voxels_outside_a_labels_ground_truth_box_are_dropped():
    # Label 1's prediction spills into an ignored block in the far corner, outside label
    # 1's ground-truth box: its prediction box reaches the corner, and the spill must go.
    # A second ignored block lies outside every box and must change nothing.
    shape = (12, 20, 24)
    gt = box_labels({1: np.s_[2:6, 3:8, 3:9], 2: np.s_[7:11, 12:18, 14:20]}, shape=shape)
    pred = gt.copy()
    pred[7:11, 12:18, 14:20] = 0
    pred[7:11, 13:19, 13:19] = 2  # label 2 shifted
    gt[8:12, 0:5, 18:24] = 3  # ignored, far from label 1's ground truth
    pred[9:11, 1:3, 19:22] = 1  # label 1 predicted where nobody annotated
    gt[0:3, 14:20, 0:5] = 3  # ignored, outside every box
    entries = [1, 2, (1, 2)]
    ours = label_metrics(pred, gt, entries, SPACING, ignore_label=3)
    assert ours[1]["dice"] == 1.0 and ours[1]["hd95"] == 0.0 and ours[1]["vol_pred"] == ours[1]["vol_gt"]
    for entry in entries:
        values = entry if isinstance(entry, tuple) else (entry,)
        kept = gt != 3
        pred_mask, gt_mask = np.isin(pred, values) & kept, np.isin(gt, values) & kept
        assert ours[entry] == binary_metrics(pred_mask, gt_mask, SPACING, crop=False)
    # Without the ignore label the spill counts: the test would catch a path that misses it.
    assert label_metrics(pred, gt, [1], SPACING)[1]["dice"] < 1.0
    # Label 2 does not reach either ignored block: the same numbers as with no ignore label.
    assert ours[2] == label_metrics(pred, gt, [2], SPACING)[2]


def test_prediction_entirely_in_ignored_voxels_counts_as_empty():
    gt = box_labels({1: np.s_[1:3, 1:3, 1:3]}, shape=(5, 6, 7))
    pred = np.zeros_like(gt)
    gt[3:5, 4:6, 4:7] = 2
    pred[3:5, 4:6, 4:7] = 1
    result = label_metrics(pred, gt, [1], convention="nnunet", ignore_label=2)[1]
    assert result["dice"] == 0.0 and math.isnan(result["hd95"]) and result["vol_pred"] == 0.0


def test_an_ignore_label_absent_from_the_ground_truth_changes_nothing(rng):
    truth = random_case(rng)
    pred = perturb(truth, rng)
    assert label_metrics(pred, truth, [1, 2, 3], SPACING, ignore_label=IGNORE) == label_metrics(
        pred, truth, [1, 2, 3], SPACING
    )


@pytest.mark.parametrize(
    "entries, ignore_label, message",
    [
        ([1, 2], 2, r"the ignore label 2 is never scored, but 2 holds it"),
        ([1, (2, 3)], 3, r"the ignore label 3 is never scored, but \(2, 3\) holds it"),
        ([1], 0, r"the ignore label must be an integer > 0, got 0"),
        ([1], 1.5, r"the ignore label must be an integer > 0, got 1.5"),
    ],
)
def test_label_metrics_rejects_a_bad_ignore_label(entries, ignore_label, message):
    labels = np.ones((3, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=message):
        label_metrics(labels, labels, entries, ignore_label=ignore_label)


# ------------------------------------------------------------------ folders


@pytest.fixture
def sparse_folders(tmp_path, rng):
    """gt/ (sparsely annotated: value 4 is unannotated), pred/ and other/ with four cases of
    the labels 1, 2, 3 on the anisotropic grid of conftest."""
    gt_dir, pred_dir, other_dir = tmp_path / "gt", tmp_path / "pred", tmp_path / "other"
    for case in CASES:
        truth = random_case(rng)
        write_labels(gt_dir, case, sparse(truth, rng))
        write_labels(pred_dir, case, perturb(truth, rng))
        write_labels(other_dir, case, perturb(perturb(truth, rng), rng))
    return gt_dir, pred_dir, other_dir


def assert_matches_nnunet_and_medpy(result, gt_dir, pred_dir, keys, entries):
    """Dice and counts equal nnU-Net's compute_metrics with the ignore label, HD95 medpy's."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    for case in CASES:
        gt_file, pred_file = gt_dir / f"{case}.nii.gz", pred_dir / f"{case}.nii.gz"
        reference = compute_metrics(str(gt_file), str(pred_file), SimpleITKIO(), entries, IGNORE)["metrics"]
        gt, geometry = read_image(gt_file)
        pred, _ = read_image(pred_file)
        voxel_volume = float(np.prod(geometry.spacing_zyx))
        rows = result.metrics[result.metrics["case"] == case].set_index("label")
        for key, entry in zip(keys, entries):
            nnunet, ours = reference[entry], rows.loc[key]
            assert ours["dice"] == pytest.approx(nnunet["Dice"], abs=1e-12, nan_ok=True)
            assert ours["vol_pred"] == pytest.approx((nnunet["TP"] + nnunet["FP"]) * voxel_volume, rel=1e-12)
            assert ours["vol_gt"] == pytest.approx((nnunet["TP"] + nnunet["FN"]) * voxel_volume, rel=1e-12)
            pred_mask, gt_mask = reduced_masks(pred, gt, entry)
            if pred_mask.any() and gt_mask.any():
                assert ours["hd95"] == medpy_binary.hd95(pred_mask, gt_mask, voxelspacing=geometry.spacing_zyx)
            else:  # medpy needs two non-empty masks; the nnunet convention gives NaN
                assert math.isnan(ours["hd95"])


def test_label_dice_matches_nnunet_with_ignore_label_and_hd95_medpy(sparse_folders, tmp_path):
    gt_dir, pred_dir, _ = sparse_folders
    assert GEOMETRY.spacing_zyx[0] != GEOMETRY.spacing_zyx[1]  # anisotropic, so spacing matters
    result = evaluate(pred_dir, gt_dir, labels=write_dataset_json(tmp_path))
    assert list(result.metrics["name"].unique()) == ["liver", "spleen", "aorta"]
    assert_matches_nnunet_and_medpy(result, gt_dir, pred_dir, [1, 2, 3], [1, 2, 3])
    # The ignored voxels matter: without them excluded the numbers differ.
    plain = evaluate(pred_dir, gt_dir, labels="1=liver,2=spleen,3=aorta,4=unannotated").metrics
    plain = plain[plain["label"] != 4].reset_index(drop=True)
    assert not np.allclose(plain["dice"], result.metrics["dice"], equal_nan=True)


def test_region_dice_matches_nnunet_with_ignore_label_and_hd95_medpy(sparse_folders, tmp_path):
    gt_dir, pred_dir, _ = sparse_folders
    path = write_dataset_json(tmp_path, BRATS, regions_class_order=[1, 2, 3])
    result = evaluate(pred_dir, gt_dir, labels=path)
    assert list(result.metrics["label"].unique()) == REGION_KEYS
    assert_matches_nnunet_and_medpy(result, gt_dir, pred_dir, REGION_KEYS, REGIONS)


def test_folder_fast_path_drops_a_spill_into_ignored_voxels_outside_the_box(tmp_path):
    # As in the label_metrics test, through evaluate_folders, whose boxes come from one
    # find_objects pass per image.
    gt = box_labels({1: np.s_[1:4, 2:6, 2:7]})
    pred = gt.copy()
    gt[7:10, 10:16, 12:18] = 2
    pred[8:10, 11:14, 13:16] = 1
    write_labels(tmp_path / "gt", "case", gt)
    write_labels(tmp_path / "pred", "case", pred)
    row = evaluate(tmp_path / "pred", tmp_path / "gt", labels="1=liver,2=ignore").metrics.iloc[0]
    assert row["dice"] == 1.0 and row["hd95"] == 0.0 and row["vol_pred"] == row["vol_gt"]


def test_a_prediction_holding_the_ignore_label_fails_naming_file_and_value(sparse_folders, tmp_path):
    gt_dir, pred_dir, _ = sparse_folders
    pred, _ = read_image(pred_dir / "case_02.nii.gz")
    pred[0, 0, :3] = IGNORE
    write_labels(pred_dir, "case_02", pred)
    with pytest.raises(EvaluationError, match=r"case_02.nii.gz: holds the ignore label 4") as info:
        evaluate(pred_dir, gt_dir, labels=write_dataset_json(tmp_path))
    assert len(info.value.problems) == 1


def test_the_ignore_value_is_unknown_without_an_ignore_entry(sparse_folders):
    gt_dir, pred_dir, _ = sparse_folders
    with pytest.raises(EvaluationError, match=r"label values \[4\] are not in the label map"):
        evaluate(pred_dir, gt_dir, labels="1=liver,2=spleen,3=aorta")


def test_summary_and_reports_record_the_ignore_label(sparse_folders, tmp_path):
    gt_dir, pred_dir, other_dir = sparse_folders
    out = tmp_path / "out"
    result = evaluate(pred_dir, gt_dir, labels=write_dataset_json(tmp_path), compare=other_dir, out_dir=out)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["ignore_label"] == IGNORE == result.summary["ignore_label"]
    assert summary["labels"] == {"1": "liver", "2": "spleen", "3": "aorta"}
    assert "- **Ignore label**: 4: ground-truth voxels holding it are left out" in (out / "report.md").read_text(encoding="utf-8")
    assert "<dt>Ignore label</dt>" in (out / "report.html").read_text(encoding="utf-8")
    plain = evaluate(pred_dir, pred_dir, labels="1=liver,2=spleen,3=aorta", out_dir=tmp_path / "plain")
    assert plain.summary["ignore_label"] is None
    assert "Ignore label" not in (tmp_path / "plain" / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_parallel_jobs_give_the_same_tables_with_an_ignore_label(sparse_folders, tmp_path):
    gt_dir, pred_dir, other_dir = sparse_folders
    labels = write_dataset_json(tmp_path)
    serial = evaluate(pred_dir, gt_dir, labels=labels, compare=other_dir, jobs=1)
    parallel = evaluate(pred_dir, gt_dir, labels=labels, compare=other_dir, jobs=2)
    assert serial.metrics.equals(parallel.metrics)


# ------------------------------------------------------------------ command line


def test_help_shows_the_ignore_spelling(capsys):
    assert '"1=liver,2=ignore"' in help_text(capsys, "evaluate")


def test_cli_run_with_a_dataset_json_carrying_an_ignore_label(sparse_folders, tmp_path, capsys):
    gt_dir, pred_dir, _ = sparse_folders
    out = tmp_path / "out"
    path = write_dataset_json(tmp_path, file_ending=".nii.gz")
    code = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out),
                 "--labels", str(path), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("liver", "spleen", "aorta")) and "ignore" not in printed
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["ignore_label"] == IGNORE and summary["label_map"] == str(path)
    expected = evaluate(pred_dir, gt_dir, labels=path).metrics
    assert summary["per_class"]["liver"]["dice"]["mean"] == pytest.approx(expected.query("label == 1")["dice"].mean())


def test_cli_reports_an_ignore_label_below_a_label(sparse_folders, tmp_path, capsys):
    gt_dir, pred_dir, _ = sparse_folders
    code = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(tmp_path / "out"),
                 "--labels", "1=liver,2=spleen,4=aorta,3=ignore", "--no-progress"])
    assert code == 1
    assert "ignore label 3 must be the highest label value, as nnU-Net requires" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
